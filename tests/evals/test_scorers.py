"""The official scorers: OVO-Bench against its own code, StreamingBench against hand-checked counts."""

import copy
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamreason.cli import main
from streamreason.errors import RowError
from streamreason.evals import ovo, streamingbench
from streamreason.evals.registry import Prediction, get_benchmark

MC = ["{gt}", "{other}", "B. A person with a hat", "{gt_lower}", None, "The answer is {gt}.", "", "({gt})"]
REC = ["{count}", "1, 2", "{count} times", "no", None, "0", "I count {count}, maybe {count}"]
YES_NO = ["Yes", "No", "Y", "N", "yes", "no", "Not sure", "Yes.", None, "", "Yes and No"]


def _responses(entries, seed):
    rng = random.Random(seed)
    out = {}
    for e in entries:
        if e["task"] in ovo.FORWARD_TASKS:
            for j, p in enumerate(e["test_info"]):
                pick = rng.choice(REC if e["task"] == "REC" else YES_NO)
                out[(e["id"], j)] = pick if pick is None else pick.format(count=p.get("count"))
        else:
            gt = chr(65 + e["gt"])
            pick = rng.choice(MC)
            other = chr(65 + (e["gt"] + 1) % len(e["options"]))
            out[(e["id"], None)] = (
                pick if pick is None else pick.format(gt=gt, other=other, gt_lower=gt.lower())
            )
    return out


def _official(scorer, results, capsys) -> list[str]:
    capsys.readouterr()
    scorer(SimpleNamespace(model="M"), copy.deepcopy(results)).score()
    return capsys.readouterr().out.rstrip("\n").split("\n")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ovo_scores_equal_the_official_scorer_on_every_annotation(
    shared_data, official_ovo_scorer, capsys, seed
):
    """All 1,640 entries (3,035 questions and probes) with responses drawn from the official
    rules' edge cases: the same per-task, per-category and total figures, in the same blocks
    (the official task order within a block is the files' order, and the forward one Python's
    set order, so each block's lines are compared as a multiset)."""
    entries = ovo.load_annotations(shared_data / "ovo_bench" / "ovo_bench_new.json")
    results = ovo.result_file(entries, _responses(entries, seed), video_dir="data/src_videos")
    ours, per_item = ovo.score(results)
    official = _official(official_ovo_scorer, results, capsys)
    mine = ours.report("M").split("\n")
    assert _blocks(official) == _blocks(mine)
    assert ours.counts == {"EPM": 297, "HLD": 186, "ASI": 148, "STU": 178, "OJR": 184, "ATR": 116, "ACR": 109,
                           "OCR": 149, "FPD": 101, "REC": 698, "SSR": 629, "CRR": 240}  # fmt: skip
    assert 0 < ours.total < 100 and sum(map(len, per_item.values())) == 3035


def _blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """A printout's blocks (split at blank lines): ``(first line, sorted lines)``."""
    blocks = "\n".join(lines).split("\n\n")
    return [(b.split("\n")[0], sorted(b.split("\n"))) for b in blocks]


def test_ovo_report_lists_tasks_in_ovo_bench_order(shared_data):
    """Whatever order the result files hold (the annotation's is EPM HLD ASI, STU OJR ATR ACR
    OCR FPD, ...; shuffled here), the blocks print backward, real-time, forward (as
    ``OVOBenchOfflineScore.score``) and each block's tasks in ``constant.py``'s order."""
    entries = ovo.load_annotations(shared_data / "ovo_bench" / "ovo_bench_new.json")
    random.Random(0).shuffle(entries)
    report = ovo.score(ovo.result_file(entries, _responses(entries, 0)))[0].report("M")
    printed = [line.split(",")[0].removeprefix("Task: ") for line in report.split("\n")
               if line.startswith(("Task:", "Evaluate"))]  # fmt: skip
    assert printed == ["Evaluate Backward Tracing...", "EPM", "ASI", "HLD",
                       "Evaluate Real-time Visual Perception...", "OCR", "ACR", "ATR", "STU", "FPD", "OJR",
                       "Evaluate Forward Active Responding...", "REC", "SSR", "CRR"]  # fmt: skip


def test_ovo_official_rules_on_hand_checked_responses():
    results = {
        "backward": [{"id": i, "task": "EPM", "response": r, "ground_truth": "A"}
                     for i, r in enumerate(["A", "B. A person", "a", None])],  # substring letter counts
        "realtime": [{"id": 9, "task": "OCR", "response": "C", "ground_truth": "C"}],
        "forward": [
            {"id": 10, "task": "REC", "test_info": [{"count": 3, "response": "3"},
                                                    {"count": 12, "response": "1, 2"},  # digits joined
                                                    {"count": 3, "response": "three"}]},
            {"id": 11, "task": "SSR", "test_info": [{"type": 0, "response": "N"}, {"type": 1, "response": "yes"},
                                                    {"type": 0, "response": "Not sure"},
                                                    {"type": 1, "response": "Yes."}]},
            {"id": 12, "task": "CRR", "test_info": [{"type": 1, "response": None}, {"type": 0, "response": "No"}]},
        ],
    }  # fmt: skip
    score, per_item = ovo.score(results)
    assert per_item == {"EPM": [1, 1, 0, 0], "OCR": [1], "REC": [1, 1, 0], "SSR": [1, 0, 1, 1], "CRR": [0, 1]}
    assert score.report("M").split("\n") == [
        "Offline Model: M",
        "Evaluate Backward Tracing...", "Task: EPM, Acc: 50.00", "Backward Avg.: 50.00", "",
        "Evaluate Real-time Visual Perception...", "Task: OCR, Acc: 100.00", "Realtime Avg.: 100.00", "",
        "Evaluate Forward Active Responding...", "Task: REC, Acc: 66.67", "Task: SSR, Acc: 75.00",
        "Task: CRR, Acc: 50.00", "Forward Avg.: 63.89", "",
        "Total Avg.: 71.30",
    ]  # fmt: skip


def test_ovo_bad_result_files_are_named(tmp_path):
    (tmp_path / "a.json").write_text('{"backward": []}')
    with pytest.raises(RowError, match="a.json"):
        ovo.load_results(tmp_path)
    with pytest.raises(RowError, match="no OVO-Bench result files"):
        ovo.load_results(tmp_path / "nope")
    bad = {"backward": [], "realtime": [], "forward": [{"id": 7, "task": "REC", "test_info": [{"count": 1}]}]}
    with pytest.raises(RowError, match="id 7"):
        ovo.score(bad)


def test_eval_score_ovo_reads_every_file_of_the_model_folder(shared_data, tmp_path, capsys):
    """Results split over two files (as OVO-Bench writes one per task list) score as one."""
    entries = ovo.load_annotations(shared_data / "ovo_bench" / "ovo_bench_new.json")
    responses = _responses(entries, 5)
    whole = ovo.result_file(entries, responses)
    half = len(entries) // 2
    folder = tmp_path / "results" / "MyModel"
    folder.mkdir(parents=True)
    (folder / "MyModel_a_offline_1.json").write_text(
        json.dumps(ovo.result_file(entries[:half], responses), indent=4)
    )
    (folder / "MyModel_b_offline_1.json").write_text(json.dumps(ovo.result_file(entries[half:], responses)))
    main(["eval", "score", "--benchmark", "ovo", str(folder)])
    printed = capsys.readouterr().out.rstrip("\n").split("\n")
    assert printed == ovo.score(whole)[0].report("MyModel").split("\n")


def _sb_real():
    qs = [("Counting", "C", "C"), ("Counting", "B", " B"), ("Object Recognition", "A", "a"),
          ("Object Recognition", "D", ""), ("Object Recognition", "D", None), ("Object Recognition", "D", "D. the cup"),
          ("Object Recognition", "A", streamingbench.NO_RESPONSE)]  # fmt: skip
    questions = []
    for task, answer, response in qs:
        q = {"task_type": task, "question": "?", "time_stamp": "00:00:05", "answer": answer,
             "options": ["A. a", "B. b", "C. c", "D. d"]}  # fmt: skip
        if response is not None:
            q["M"] = response
        questions.append(q)
    return [{"video_path": "./videos/x.mp4", "questions": questions}]


def _sb_proactive():
    def q(polls, answered):
        return {"task_type": "Proactive Output", "question": 'When the score is 3, output "3".',
                "time_stamp": "00:00:20", "ground_truth_time_stamp": "00:00:29", "ground_truth_output": "3",
                "M": streamingbench.proactive_record(polls, answered)}  # fmt: skip

    silent = [(t, "") for t in range(21, 34)]  # polled to ground truth + 4 s, never spoke
    return [{"video_path": "./videos/p.mp4", "questions": [
        q([(21, ""), (31, "3")], 31), q([(21, ""), (32, "3")], 32), q([(21, ""), (27, "no")], 27), q(silent, None)]}]  # fmt: skip


def test_streamingbench_official_rules_on_hand_checked_responses():
    """Real-time: the first character must equal the letter (no stripping, case-sensitive); a
    question without a response ("", or the harness's NO_RESPONSE) is in the denominator,
    wrong, and counted unanswered; one without the model's key is not counted. Proactive: the
    last turn within 2 s of the ground truth, and (answer accuracy) the ground-truth output in
    its content; never speaking is late, so wrong."""
    score = streamingbench.score(_sb_real(), _sb_proactive(), "M")
    assert score.tasks == {"Counting": (2, 1), "Object Recognition": (4, 1)}
    assert score.total == (6, 2) and score.unanswered == 2
    assert score.proactive == (4, 2, 1) and score.proactive_unanswered == 1


def _count_py(count, tmp_path, monkeypatch, task: str, src: Path, model: str) -> dict:
    """StreamingBench's ``count.py`` on a file: its ``{model}_stats.json``."""
    monkeypatch.chdir(tmp_path)
    count(SimpleNamespace(task=task, src=str(src), model=model))
    return json.loads((tmp_path / f"{model}_stats.json").read_text())


SB_REAL_PICKS = ["{gt}", "{other}", " {gt}", "{gt_lower}", None, "{gt}. the answer", ""]


def _sb_predictions(rows, seed):
    """Predictions drawn from count.py's edge cases; ``None`` is a silent policy. Proactive: a
    silent policy polls to ground truth + 4 s; one that speaks does so 0 to 5 s after the ground
    truth (2 s is the limit), with or without the expected output."""
    rng = random.Random(seed)
    preds = {}
    for row in rows:
        (q,) = row.queries
        p = Prediction(row.id, row.task, 0, q.time_s, q.answer_time_s, q.answer)
        if row.id.startswith("sb-real"):
            pick = rng.choice(SB_REAL_PICKS)
            other = "ABCD"[("ABCD".index(q.answer) + 1) % 4]
            p.response = (
                pick if pick is None else pick.format(gt=q.answer, other=other, gt_lower=q.answer.lower())
            )
        else:
            end = q.answer_time_s + streamingbench.PROACTIVE_GRACE_S
            spoke = None if rng.random() < 0.3 else q.answer_time_s + rng.randint(0, 5)
            polls = [(float(t), "") for t in range(int(q.time_s) + 1, int(spoke or end) + 1)]
            if spoke is not None and polls:
                p.response, p.response_s = rng.choice([q.answer, "no idea"]), float(spoke)
                polls[-1] = (float(spoke), p.response)
            p.polls = tuple(polls)
        preds[row.id] = [p]
    return preds


@pytest.mark.parametrize("seed", [0, 1])
def test_streamingbench_harness_files_score_the_same_under_count_py(
    shared_data, official_streamingbench_count, tmp_path, monkeypatch, seed
):
    """The harness's result files for all 2,500 real-time and 250 proactive questions, a third
    or so unanswered: StreamingBench's own count.py reads them (no crash) and gives the same
    per-task, total and proactive counts as ``eval score``; the unanswered questions are in
    the denominator as wrong, and ``predictions.jsonl``'s per-item scores add up to the same."""
    anno = [
        str(shared_data / "streamingbench" / f) for f in ("questions_real.json", "questions_proactive.json")
    ]
    bench = get_benchmark("streamingbench")
    rows, _ = bench.rows(anno, None)
    preds = _sb_predictions(rows, seed)
    files = bench.write_results(anno, rows, preds, tmp_path, "M")
    scores, _ = bench.official_score(files, "M")
    real = _count_py(official_streamingbench_count, tmp_path, monkeypatch, "real", files[0], "M")
    assert {k: {"total": v["total"], "correct": v["correct"]} for k, v in real.items()} == {
        **scores["tasks"], "total": scores["real_time_total"]}  # fmt: skip
    silent = sum(p.response in (None, "") for (p,) in preds.values() if p.row_id.startswith("sb-real"))
    assert scores["real_time_total"]["total"] == 2500 and scores["unanswered"] == silent > 500
    proactive = _count_py(official_streamingbench_count, tmp_path, monkeypatch, "proactive", files[1], "M")
    assert {k: v for k, v in proactive["Proactive Output"].items() if not k.endswith("accuracy")} == {
        "total": 250, "time_correct": scores["proactive"]["time_correct"],
        "answer_correct": scores["proactive"]["answer_correct"]}  # fmt: skip
    never = sum(p.response is None for (p,) in preds.values() if p.row_id.startswith("sb-pro"))
    assert scores["proactive_unanswered"] == never > 30
    by_id = {r.id: r for r in rows}
    items = [bench.item_score(by_id[i], p) for i, (p,) in preds.items()]
    assert sum(items) == scores["real_time_total"]["correct"] + scores["proactive"]["answer_correct"]


def test_count_py_crashes_on_empty_responses_which_score_counts_as_wrong(
    official_streamingbench_count, tmp_path, monkeypatch
):
    """Why the harness writes NO_RESPONSE and not "": count.py reads ``response[0]``."""
    data = _sb_real()
    path = tmp_path / "real_output_M.json"
    path.write_text(json.dumps(data))
    with pytest.raises(IndexError):
        _count_py(official_streamingbench_count, tmp_path, monkeypatch, "real", path, "M")
    data[0]["questions"][3]["M"] = streamingbench.NO_RESPONSE
    path.write_text(json.dumps(data))
    stats = _count_py(official_streamingbench_count, tmp_path, monkeypatch, "real", path, "M")
    assert stats["total"]["total"] == 6 and stats["total"]["correct"] == 2
    assert streamingbench.score(data, None, "M").total == streamingbench.score(_sb_real(), None, "M").total


def test_streamingbench_bad_records_are_named():
    data = _sb_real()
    data[0]["questions"][1]["M"] = 5
    with pytest.raises(RowError, match=r"\[0\]\.questions\[1\].*the response is 5"):
        streamingbench.score(data, None, "M")
    pro = _sb_proactive()
    pro[0]["questions"][2]["M"]["dialog_history"] = []
    with pytest.raises(RowError, match=r"\[0\]\.questions\[2\]: malformed proactive record"):
        streamingbench.score(None, pro, "M")


def test_streamingbench_timestamps_parse_as_the_official_code():
    assert [streamingbench.parse_timestamp(t, "q") for t in ("00:03:10", "00:24", "00:12450", "0:00:8")] == [
        190, 24, 12450, 8]  # fmt: skip
    with pytest.raises(RowError, match="q: time stamp '1:xx'"):
        streamingbench.parse_timestamp("1:xx", "q")


def test_eval_score_streamingbench_prints_the_leaderboard_columns(tmp_path, capsys):
    (tmp_path / "real_output_M.json").write_text(json.dumps(_sb_real()))
    (tmp_path / "proactive_output_M.json").write_text(json.dumps(_sb_proactive()))
    main(["eval", "score", "--benchmark", "streamingbench", str(tmp_path)])
    out = capsys.readouterr().out
    for cell in ("OP", "CT", "Real-Time All", "50.00 (2)", "25.00 (4)", "33.33 (6)", "50.00 (4)", "25.00 (4)",
                 "real-time: 2 of 6 unanswered; proactive: 1 of 4 unanswered (scored as wrong)"):  # fmt: skip
        assert cell in out
