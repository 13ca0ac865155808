"""The benchmark harness end to end: real MP4s, the tiny model or a gold script, official files."""

import json
from types import SimpleNamespace

from streamreason.cli import main
from streamreason.envs.convert import read_source
from streamreason.evals.harness import run_benchmark


def test_synthetic_benchmark_with_the_tiny_model(tiny_recipe, tiny_model_dir, synth, tmp_path, capsys):
    out = tmp_path / "out"
    main(["eval", tiny_recipe, "--benchmark", "synthetic", "--anno", str(synth), "--model", str(tiny_model_dir),
          "--out", str(out), "--name", "tiny", "env_pool.in_process=true"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "synthetic benchmark: tiny" in printed and "3 streams, 0 failed" in printed
    rows = [json.loads(x) for x in synth.read_text().splitlines()]
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    want = sum(sum(m["role"] == "user" for m in r["conversations"]) for r in rows)
    assert len(preds) == want and {p["row_id"] for p in preds} == {r["id"] for r in rows}
    assert all(
        p["score"] in (0.0, 1.0) and (p["response"] is None) == (p["response_s"] is None) for p in preds
    )
    scores = json.loads((out / "scores.json").read_text())
    assert scores["scores"]["all"]["questions"] == want and scores["failed"] == 0


def test_ovo_harness_writes_official_results_that_score_the_same(
    eval_cfg, gold_stack, synth, tmp_path, capsys
):
    """Gold answers (a script that answers every question right when asked) score 100 on each
    task, a stream whose video is missing scores 0, and ``eval score`` on the written
    OVO-Bench result file prints exactly the harness's numbers."""
    videos = sorted(p.name for p in (synth.parent / "videos").iterdir())
    anno = [
        {"id": 0, "task": "EPM", "video": videos[0], "realtime": 4.5, "question": "Which?", "options": ["x", "y", "z", "w"], "gt": 2},
        {"id": 1, "task": "EPM", "video": "gone.mp4", "realtime": 3, "question": "Which?", "options": ["x", "y"], "gt": 0},
        {"id": 2, "task": "OCR", "video": videos[1], "realtime": 2.2, "question": "What?", "options": ["x", "y"], "gt": 1},
        {"id": 3, "task": "REC", "video": videos[2], "activity": "waving", "start_times": [1], "end_times": [2],
         "test_info": [{"realtime": 2, "count": 1}, {"realtime": 4.5, "count": 2}, {"realtime": 4.7, "count": 2}]},
        {"id": 4, "task": "SSR", "video": videos[0], "tutorial": "t", "all_steps": ["a", "b"], "start_time": [0, 3],
         "end_time": [3, 6], "test_info": [{"realtime": 1.5, "step": "a", "type": 1}, {"realtime": 1.6, "step": "b", "type": 0}]},
        {"id": 5, "task": "CRR", "video": videos[1], "question": "What happens?", "answer": "x", "ask_time": 1,
         "clue_time": 3, "test_info": [{"realtime": 1.5, "type": 0}, {"realtime": 3.5, "type": 1}]},
    ]  # fmt: skip
    anno_path = tmp_path / "ovo.json"
    anno_path.write_text(json.dumps(anno))
    root = synth.parent / "videos"
    cfg = eval_cfg
    summary = run_benchmark("ovo", cfg, anno=[str(anno_path)], video_root=str(root), out_dir=tmp_path / "out",
                            name="gold", stack=gold_stack(cfg, read_source("ovo", anno_path, root).rows))  # fmt: skip
    harness_report = capsys.readouterr().out
    tasks = summary["scores"]["tasks"]
    assert tasks == {"backward": {"EPM": 50.0}, "realtime": {"OCR": 100.0},
                     "forward": {"REC": 100.0, "SSR": 100.0, "CRR": 100.0}}  # fmt: skip
    assert summary["rows"] == 8 and summary["failed"] == 1  # REC, SSR, CRR probes in one second split streams
    assert (
        summary["conversion"]["missing_videos"] == 1
        and "1 of the 8 streams name a missing video" in harness_report
    )
    (result,) = (tmp_path / "out" / "ovo" / "gold").iterdir()
    assert result.name == "gold_EPM_OCR_REC_SSR_CRR_offline_1.json"
    written = json.loads(result.read_text())
    assert [p["response"] for p in written["forward"][0]["test_info"]] == ["1", "2", "2"]
    assert written["backward"][1]["response"] is None  # the missing video
    main(["eval", "score", "--benchmark", "ovo", str(result.parent)])
    scored = capsys.readouterr().out.strip()
    assert scored.startswith("Offline Model: gold") and scored in harness_report
    assert "Total Avg.: 83.33" in scored


def _streamingbench_files(synth, tmp_path, times):
    """StreamingBench annotation files over the first synthetic video: one real-time Counting
    question (answer B) per time in ``times`` and one proactive question (ground truth "now" at
    3 s). Returns ``([real_path, proactive_path], video_root)``."""
    root = synth.parent / "videos"
    video = "./" + sorted(p.name for p in root.iterdir())[0]
    ask = {
        "task_type": "Counting",
        "question": "How many?",
        "answer": "B",
        "options": ["A. 1", "B. 2", "C. 3", "D. 4"],
    }
    real = [
        {
            "time": "[0:00:00 - 0:00:05]",
            "video_path": video,
            "questions": [{**ask, "time_stamp": t} for t in times],
        }
    ]
    proactive = [{"time": "[0:00:00 - 0:00:05]", "video_path": video, "questions": [
        {"task_type": "Proactive Output", "question": 'When a shape moves, output "now".', "time_stamp": "00:00:01",
         "ground_truth_time_stamp": "00:00:03", "ground_truth_output": "now"}]}]  # fmt: skip
    paths = [tmp_path / "questions_real.json", tmp_path / "questions_proactive.json"]
    for p, data in zip(paths, (real, proactive), strict=True):
        p.write_text(json.dumps(data))
    return paths, root


def test_streamingbench_harness_polls_proactive_questions(eval_cfg, gold_stack, synth, tmp_path, capsys):
    """Gold answers: the real-time question is right; the proactive one speaks in the
    ground-truth second, so its poll time (end of that chunk) is within 2 s and it says the
    output. The written files score the same through ``eval score``."""
    paths, root = _streamingbench_files(synth, tmp_path, ["00:00:04"])
    cfg = eval_cfg
    rows = read_source("streamingbench-real", paths[0], root).rows + read_source(
        "streamingbench-proactive", paths[1], root).rows  # fmt: skip
    summary = run_benchmark("streamingbench", cfg, anno=[str(p) for p in paths], video_root=str(root),
                            out_dir=tmp_path / "out", name="gold", stack=gold_stack(cfg, rows))  # fmt: skip
    s = summary["scores"]
    assert s["tasks"] == {"Counting": {"total": 1, "correct": 1}}
    assert s["proactive"] == {"total": 1, "time_correct": 1, "answer_correct": 1}
    record = json.loads((tmp_path / "out" / "proactive_output_gold.json").read_text())[0]["questions"][0][
        "gold"
    ]
    assert record["answered"] == 4.0 and [h["time"] for h in record["dialog_history"][1::2]] == [
        2.0,
        3.0,
        4.0,
    ]
    assert record["dialog_history"][-1]["content"] == "now"
    capsys.readouterr()
    main(["eval", "score", "--benchmark", "streamingbench", str(tmp_path / "out")])
    assert "100.00 (1)" in capsys.readouterr().out


def test_streamingbench_silence_is_scored_wrong_by_count_py_and_eval_score(
    eval_cfg, gold_stack, synth, tmp_path, capsys, monkeypatch, official_streamingbench_count
):
    """A policy silent on one of two real-time questions and on the proactive one: the written
    files are read by StreamingBench's own count.py without error, which gives 1 of 2 and 0 of
    1, as the harness and ``eval score`` do; both print how many went unanswered."""
    paths, root = _streamingbench_files(synth, tmp_path, ["00:00:04", "00:00:05"])
    cfg = eval_cfg
    answered = [r for r in read_source("streamingbench-real", paths[0], root).rows if r.id == "sb-real-0-0"]
    out = tmp_path / "out"
    summary = run_benchmark("streamingbench", cfg, anno=[str(p) for p in paths], video_root=str(root),
                            out_dir=out, name="half", stack=gold_stack(cfg, answered))  # fmt: skip
    s = summary["scores"]
    assert s["tasks"] == {"Counting": {"total": 2, "correct": 1}} and s["unanswered"] == 1
    assert (
        s["proactive"] == {"total": 1, "time_correct": 0, "answer_correct": 0}
        and s["proactive_unanswered"] == 1
    )
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(p["response"], p["score"]) for p in preds] == [("B", 1.0), (None, 0.0), (None, 0.0)]
    monkeypatch.chdir(tmp_path)
    official_streamingbench_count(
        SimpleNamespace(task="real", src=str(out / "real_output_half.json"), model="half")
    )
    stats = json.loads((tmp_path / "half_stats.json").read_text())
    assert stats["total"] == {"total": 2, "correct": 1, "accuracy": 0.5}
    official_streamingbench_count(SimpleNamespace(task="proactive", src=str(out / "proactive_output_half.json"),
                                                  model="half"))  # fmt: skip
    stats = json.loads((tmp_path / "half_stats.json").read_text())
    assert (stats["Proactive Output"]["total"], stats["Proactive Output"]["time_correct"]) == (1, 0)
    capsys.readouterr()
    main(["eval", "score", "--benchmark", "streamingbench", str(out)])
    printed = capsys.readouterr().out
    assert "50.00 (2)" in printed and "0.00 (1)" in printed
    assert "real-time: 1 of 2 unanswered; proactive: 1 of 1 unanswered (scored as wrong)" in printed


def test_synthetic_benchmark_scores_gold_answers_as_right_and_on_time(eval_cfg, gold_stack, synth, tmp_path):
    cfg = eval_cfg
    rows = read_source("thinkstream", synth).rows
    summary = run_benchmark("synthetic", cfg, anno=[str(synth)], video_root=None, out_dir=tmp_path,
                            name="gold", stack=gold_stack(cfg, rows))  # fmt: skip
    everything = summary["scores"]["all"]
    assert (everything["accuracy"], everything["answered"], everything["abs_timing_error_s"]) == (
        100.0,
        100.0,
        0.0,
    )
