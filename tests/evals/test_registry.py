"""The benchmark registry, and the test template for a new benchmark.

A new benchmark is one class and one registration (here a toy one over synthetic rows: a
question is right when the response is exactly the answer, and its result file is one JSON
list); ``run_benchmark`` then runs it end to end like the built-in ones.
"""

import json
from pathlib import Path

import pytest

from streamreason.cli import main
from streamreason.envs.convert import ConvertReport, read_source
from streamreason.errors import ConfigError
from streamreason.evals import BENCHMARKS, FORMATS
from streamreason.evals.harness import run_benchmark
from streamreason.evals.registry import Benchmark, Prediction, get_benchmark, register_benchmark
from streamreason.types import Query, StreamRow, read_rows


@register_benchmark("toy")
class ToyBench(Benchmark):
    """Row JSONL in; exact-match answers; ``toy_<model>.json`` out."""

    def convert_file(self, path, video_root):
        rows, bad = read_rows(path)
        return ConvertReport(entries=len(rows) + len(bad), rows=rows, errors=bad)

    def item_score(self, row, prediction):
        return float(prediction.response == prediction.ground_truth)

    def write_results(self, anno, rows, preds, out_dir, model_name):
        path = out_dir / f"toy_{model_name}.json"
        items = [
            {"id": p.row_id, "answer": p.ground_truth, model_name: p.response}
            for r in rows
            for p in preds[r.id]
        ]
        path.write_text(json.dumps(items))
        return [path]

    def official_score(self, files, model_name):
        items = json.loads(files[0].read_text())
        right = sum(x[model_name] == x["answer"] for x in items)
        scores = {"questions": len(items), "accuracy": 100 * right / len(items)}
        return scores, f"toy: {model_name} {scores['accuracy']:.2f}% of {len(items)}"

    def score_results_dir(self, results_dir, model_name):
        (path,) = Path(results_dir).glob("toy_*.json")
        return self.official_score([path], model_name or path.stem.removeprefix("toy_"))


def test_a_registered_benchmark_runs_end_to_end(eval_cfg, gold_stack, synth, tmp_path, capsys):
    """Gold answers on the toy benchmark: every question right, in the predictions, the result
    file and its score, which the result folder scores again the same."""
    rows = read_source("thinkstream", synth).rows
    out = tmp_path / "out"
    summary = run_benchmark("toy", eval_cfg, anno=[str(synth)], video_root=None, out_dir=out, name="gold",
                            stack=gold_stack(eval_cfg, rows))  # fmt: skip
    n = sum(len(r.queries) for r in rows)
    assert summary["scores"] == {"questions": n, "accuracy": 100.0}
    assert summary["files"] == [str(out / "toy_gold.json")] and summary["rows"] == len(rows)
    assert f"toy: gold 100.00% of {n}" in capsys.readouterr().out
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == n and all(p["score"] == 1.0 for p in preds)
    assert get_benchmark("toy").score_results_dir(out, None) == (
        summary["scores"],
        f"toy: gold 100.00% of {n}",
    )


def test_an_unknown_benchmark_is_a_config_error_naming_the_registered_ones(eval_cfg, tmp_path):
    for call in (lambda: get_benchmark("nope"),
                 lambda: run_benchmark("nope", eval_cfg, anno=[], video_root=None, out_dir=tmp_path, name="m")):  # fmt: skip
        with pytest.raises(ConfigError, match="unknown benchmark 'nope'; registered: ") as e:
            call()
        assert all(name in str(e.value) for name in ("ovo", "streamingbench", "synthetic", "toy"))


def test_the_built_in_benchmarks_and_their_converters_are_registered():
    assert BENCHMARKS == ("ovo", "streamingbench", "synthetic")
    assert FORMATS == ("thinkstream", "thinkstream-sft", "vst", "ovo", "streamingbench-real",
                       "streamingbench-proactive")  # fmt: skip


def test_eval_score_prints_the_synthetic_table_again(eval_cfg, gold_stack, synth, tmp_path, capsys):
    out = tmp_path / "out"
    run_benchmark("synthetic", eval_cfg, anno=[str(synth)], video_root=None, out_dir=out, name="gold",
                  stack=gold_stack(eval_cfg, read_source("thinkstream", synth).rows))  # fmt: skip
    harness_report = capsys.readouterr().out
    main(["eval", "score", "--benchmark", "synthetic", str(out), "--model-name", "gold"])
    scored = capsys.readouterr().out.strip()
    assert scored.startswith("synthetic benchmark: gold") and scored in harness_report


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="benchmark 'toy' is already registered to ToyBench"):
        register_benchmark("toy")(ToyBench)


def _row(row_id: str, kind: str, answer: str) -> StreamRow:
    meta = {"benchmark": "streamingbench", "kind": kind, "entry": 0, "question": 0}
    return StreamRow(row_id, "v.mp4", [Query("q", 1.0, answer, 3.0)], meta=meta)


def test_the_streamingbench_kind_comes_from_row_metadata():
    """The converter stores the kind; scoring reads it there, whatever the row's id says.
    Each prediction is right under one kind's rule and wrong under the other's."""
    bench = get_benchmark("streamingbench")
    # proactive: said at 4 s, within 2 s of the ground truth (3 s); real-time: "n" is not "now"
    on_time = Prediction("x", None, 0, 1.0, 3.0, "now", response="now", response_s=4.0)
    assert bench.item_score(_row("stream-7", "proactive", "now"), on_time) == 1.0
    assert bench.item_score(_row("sb-proactive-0-0", "real", "now"), on_time) == 0.0
    # real-time: the letter B; proactive: said at 9 s, 6 s after the ground truth
    late_b = Prediction("x", None, 0, 1.0, 3.0, "B", response="B", response_s=9.0)
    assert bench.item_score(_row("stream-8", "real", "B"), late_b) == 1.0
    assert bench.item_score(_row("sb-real-0-0", "proactive", "B"), late_b) == 0.0


def test_streamingbench_rows_carry_their_kind_and_files_are_written_by_it(tmp_path):
    """Converted rows say their kind; renamed rows still go to the output file of their kind."""
    question = {"task_type": "Counting", "question": "How many?", "answer": "B", "time_stamp": "00:00:04",
                "options": ["A. 1", "B. 2", "C. 3", "D. 4"]}  # fmt: skip
    proactive = {"task_type": "Proactive Output", "question": "Say now.", "time_stamp": "00:00:01",
                 "ground_truth_time_stamp": "00:00:03", "ground_truth_output": "now"}  # fmt: skip
    anno = [tmp_path / "questions_real.json", tmp_path / "questions_proactive.json"]
    for path, q in zip(anno, (question, proactive), strict=True):
        path.write_text(json.dumps([{"video_path": "v.mp4", "questions": [q]}]))
    bench = get_benchmark("streamingbench")
    rows, info = bench.rows([str(p) for p in anno], str(tmp_path))
    assert [(r.id, r.meta["kind"]) for r in rows] == [
        ("sb-real-0-0", "real"),
        ("sb-proactive-0-0", "proactive"),
    ]
    assert info["missing_videos"] == ["sb-real-0-0", "sb-proactive-0-0"]
    for i, row in enumerate(rows):
        row.id = f"stream-{i}"
    preds = {"stream-0": [Prediction("stream-0", "Counting", 0, 4.0, 4.0, "B", response="B", response_s=4.0)],
             "stream-1": [Prediction("stream-1", None, 0, 1.0, 3.0, "now", response="now", response_s=3.0,
                                     polls=((2.0, ""), (3.0, "now")))]}  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    files = bench.write_results([str(p) for p in anno], rows, preds, out, "M")
    assert [f.name for f in files] == ["real_output_M.json", "proactive_output_M.json"]
    assert json.loads(files[0].read_text())[0]["questions"][0]["M"] == "B"
    assert json.loads(files[1].read_text())[0]["questions"][0]["M"]["answered"] == 3.0
    scores, _ = bench.official_score(files, "M")
    assert scores["real_time_total"] == {"total": 1, "correct": 1}
    assert scores["proactive"] == {"total": 1, "time_correct": 1, "answer_correct": 1}
