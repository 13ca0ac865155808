"""The official scorers: OVO-Bench against its own code, StreamingBench against hand-checked counts."""

import copy
import json
import random
from types import SimpleNamespace

import pytest

from streamreason.cli import main
from streamreason.errors import RowError
from streamreason.evals import ovo, streamingbench

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
          ("Object Recognition", "D", ""), ("Object Recognition", "D", None), ("Object Recognition", "D", "D. the cup")]  # fmt: skip
    questions = []
    for task, answer, response in qs:
        q = {"task_type": task, "question": "?", "time_stamp": "00:00:05", "answer": answer,
             "options": ["A. a", "B. b", "C. c", "D. d"]}  # fmt: skip
        if response is not None:
            q["M"] = response
        questions.append(q)
    return [{"video_path": "./videos/x.mp4", "questions": questions}]


def _sb_proactive():
    def q(last_time, content):
        return {"task_type": "Proactive Output", "question": 'When the score is 3, output "3".',
                "time_stamp": "00:00:20", "ground_truth_time_stamp": "00:00:29", "ground_truth_output": "3",
                "M": streamingbench.proactive_record([(21, ""), (last_time, content)], last_time)}  # fmt: skip

    return [{"video_path": "./videos/p.mp4", "questions": [q(31, "3"), q(32, "3"), q(27, "no")]}]


def test_streamingbench_official_rules_on_hand_checked_responses():
    """Real-time: the first character must equal the letter (no stripping, case-sensitive);
    empty responses are not counted. Proactive: the last turn within 2 s of the ground truth,
    and (answer accuracy) the ground-truth output in its content."""
    score = streamingbench.score(_sb_real(), _sb_proactive(), "M")
    assert score.tasks == {"Counting": (2, 1), "Object Recognition": (2, 1)}
    assert score.total == (4, 2) and score.unanswered == 1
    assert score.proactive == (3, 2, 1)


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
    for cell in ("OP", "CT", "Real-Time All", "50.00 (2)", "50.00 (4)", "66.67 (3)", "33.33 (3)"):
        assert cell in out
