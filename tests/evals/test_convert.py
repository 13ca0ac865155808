"""Converters on the real benchmark files and on ThinkStream / VST rows built to their formats."""

import json
import math
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamreason.cli import main
from streamreason.envs.convert import convert, read_source
from streamreason.errors import ConfigError, RowError
from streamreason.evals import ovo, streamingbench
from streamreason.types import read_rows


def test_every_ovo_entry_converts_with_the_file_counts(shared_data):
    path = shared_data / "ovo_bench" / "ovo_bench_new.json"
    raw = json.loads(path.read_text())
    report = read_source("ovo", path)
    assert report.entries == len(raw) == 1640 and not report.errors
    want_queries = Counter()
    for e in raw:
        want_queries[e["task"]] += len(e["test_info"]) if e["task"] in ovo.FORWARD_TASKS else 1
    assert {t: q for t, (_, q) in report.per_task.items()} == dict(want_queries)
    assert len(report.per_task) == 12
    by_id = {e["id"]: e for e in raw}
    probes_seen = Counter()
    for row in report.rows:
        entry = by_id[row.meta["ovo_id"]]
        assert row.task == entry["task"] and row.video_path.endswith(entry["video"])
        if row.meta["category"] == "forward":
            seconds = [math.floor(q.time_s) for q in row.queries]
            assert len(set(seconds)) == len(seconds), "two probes of one stream share a turn"
            assert row.end_s == math.ceil(max(q.time_s for q in row.queries))
            for q, j in zip(row.queries, row.meta["probes"], strict=True):
                probe = entry["test_info"][j]
                assert q.time_s == float(probe["realtime"]) and q.answer == ovo.probe_answer(
                    entry["task"], probe
                )
                probes_seen[(entry["id"], j)] += 1
        else:
            (q,) = row.queries
            assert q.answer == "ABCDE"[entry["gt"]] and row.end_s == max(math.ceil(entry["realtime"]), 1)
    assert sum(probes_seen.values()) == len(probes_seen) == sum(want_queries[t] for t in ovo.FORWARD_TASKS)


def test_ovo_prompts_are_the_official_templates(shared_data):
    rows = read_source("ovo", shared_data / "ovo_bench" / "ovo_bench_new.json").rows
    first = next(r for r in rows if r.meta["ovo_id"] == 0)
    assert first.queries[0].text == (
        "\nQuestion: Who did I communicate to  when chopping egg plants?\nOptions:\nA. a person with brown shirt; "
        "B. a person with green shirt; C. a person with blue shirt; D. a person with white shirt;\n\nRespond only "
        "with the letter corresponding to your chosen option (e.g., A, B, C). \nDo not include any additional "
        "text or explanation in your response.\n"
    )
    rec = next(r for r in rows if r.meta["ovo_id"] == 1558)
    assert (
        "Now, answer the following question: How many times did they breaking something?\n"
        in rec.queries[0].text
    )
    ssr = next(r for r in rows if r.meta["ovo_id"] == 1516 and r.queries[0].time_s == 26)
    assert "procedures: \nput on the hair extensions\nYour task" in ssr.queries[0].text
    assert "Answer only with “Yes” or “No”." in ssr.queries[0].text


def test_every_streamingbench_question_converts(shared_data):
    real_path = shared_data / "streamingbench" / "questions_real.json"
    raw = json.loads(real_path.read_text())
    report = read_source("streamingbench-real", real_path)
    want = Counter(q["task_type"] for e in raw for q in e["questions"])
    assert report.entries == 2252 and not report.errors
    assert {t: r for t, (r, _) in report.per_task.items()} == dict(want) and sum(want.values()) == 2500
    row = next(r for r in report.rows if r.id == "sb-real-0-0")
    assert row.queries[0].text.endswith("D. The individual checked inventory levels and noted items lacking in "
                                        "stock.\n\nThe best option is:")  # fmt: skip
    assert row.queries[0].time_s == 31 and row.end_s == 31 and row.queries[0].answer == "C"
    odd = {r.queries[0].time_s for r in report.rows}
    assert 12450 in odd  # '00:12450', read as the official code reads it

    pro = read_source("streamingbench-proactive", shared_data / "streamingbench" / "questions_proactive.json")
    assert pro.entries == 248 and len(pro.rows) == 250 and not pro.errors
    p = next(r for r in pro.rows if r.id == "sb-proactive-0-0")
    assert (p.queries[0].time_s, p.queries[0].answer_time_s, p.end_s, p.queries[0].answer) == (
        20,
        29,
        33,
        "3",
    )


def test_missing_videos_are_counted_and_listed_not_fatal(shared_data, tmp_path):
    """One video present under the root: every other stream is listed as missing, and kept
    unless --skip-missing."""
    root = tmp_path / "videos_root"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "sample_17_proactive.mp4").write_bytes(b"\0")
    out = tmp_path / "pro.jsonl"
    src = shared_data / "streamingbench" / "questions_proactive.json"
    report = convert("streamingbench-proactive", src, out, root)
    present = [r.id for r in report.rows if r.video_path.endswith("sample_17_proactive.mp4")]
    assert present and len(report.missing_videos) == 250 - len(present)
    listed = (tmp_path / "pro.jsonl.missing.txt").read_text().splitlines()
    assert len(listed) == len(report.missing_videos) and all("\t" + str(root) in x for x in listed)
    rows, bad = read_rows(out)
    assert len(rows) == 250 and not bad
    convert("streamingbench-proactive", src, out, root, skip_missing=True)
    assert sorted(r.id for r in read_rows(out)[0]) == sorted(present)


def test_thinkstream_rows_convert_and_bad_lines_are_reported(tmp_path):
    good = {"video_path": "./datasets/k700/a.mp4", "interaction_mode": "Event Trigger",
            "conversations": [{"role": "user", "content": "Tell me when the door opens.", "timestamp": 2.0, "options": None},
                              {"role": "assistant", "content": "yes", "timestamp": 7.5}],
            "thoughts": [{"timestamp": 1.0, "think": "a closed door"}, {"timestamp": 7.0, "think": "it opens"}]}  # fmt: skip
    rl_only = {k: v for k, v in good.items() if k != "thoughts"}
    src = tmp_path / "sft.jsonl"
    src.write_text(
        "\n".join([json.dumps(good), "{not json", json.dumps(rl_only), json.dumps({"video_path": "x"})])
    )
    out = tmp_path / "rows.jsonl"
    report = convert("thinkstream-sft", src, out, video_root=tmp_path / "root")
    assert report.entries == 4 and len(report.rows) == 1
    assert [e.where for e in report.errors] == ["sft.jsonl:2", "sft.jsonl:3", "sft.jsonl:4"]
    assert "--from thinkstream" in str(report.errors[1]) and "conversations" in str(report.errors[2])
    assert len((tmp_path / "rows.jsonl.errors.txt").read_text().splitlines()) == 3
    (row,), _ = read_rows(out)
    assert row.video_path == str(tmp_path / "root" / "datasets" / "k700" / "a.mp4")
    assert row.task == "Event Trigger" and [t.think for t in row.thoughts] == ["a closed door", "it opens"]
    assert (row.queries[0].time_s, row.queries[0].answer, row.queries[0].answer_time_s) == (2.0, "yes", 7.5)
    report = convert("thinkstream", src, out)
    assert len(report.rows) == 2 and len(report.errors) == 2


def _vst_table(path, rows):
    schema = pa.schema([("data_source", pa.string()), ("prompt", pa.string()), ("question", pa.string()),
                        ("video_context", pa.string()),
                        ("reward_model", pa.struct([("ground_truth", pa.list_(pa.string())), ("style", pa.string())])),
                        ("extra_info", pa.struct([("duration", pa.float64()), ("origin_id", pa.string())]))])  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_vst_parquet_rows_ask_at_the_end_of_the_video(tmp_path):
    def row(source, gt, duration=87.3, oid="o1"):
        return {"data_source": source, "prompt": "What is in the box?\nA. cat\nB. dog\nOutput the final answer in \\boxed{}.",
                "question": "What is in the box?", "video_context": "LLaVA-Video-178K/x.mp4",
                "reward_model": {"ground_truth": [gt], "style": "rule"},
                "extra_info": {"duration": duration, "origin_id": oid}}  # fmt: skip

    src = tmp_path / "train.parquet"
    _vst_table(src, [row("multiple choice", "B."), row("yes or no", "Yes", oid="o2"), row("numerical", "12", oid="o3"),
                     row("multiple choice", "B.", duration=0.0, oid="o4"), row("yes or no", "maybe", oid="o5"),
                     row("numerical", "1/2", oid="o6")])  # fmt: skip
    report = convert("vst", src, tmp_path / "vst.jsonl", video_root="/data/vst")
    assert [r.id for r in report.rows] == ["o1", "o2", "o3", "o6"]
    assert [r.queries[0].answer for r in report.rows] == [
        "B",
        "yes",
        "12",
        "1/2",
    ]  # a fraction stays text (mathruler grades it)
    assert [r.meta["ground_truth"] for r in report.rows] == [
        ["B."],
        ["Yes"],
        ["12"],
        ["1/2"],
    ]  # VST's own form
    q = report.rows[0].queries[0]
    assert q.text == "What is in the box?\nA. cat\nB. dog" and q.time_s == q.answer_time_s == 87.3
    assert (
        report.rows[0].video_path == "/data/vst/LLaVA-Video-178K/x.mp4"
        and report.rows[0].task == "multiple choice"
    )
    assert ["duration" in str(report.errors[0]), "'yes or no'" in str(report.errors[1])] == [True, True]
    assert [e.where for e in report.errors] == ["train.parquet:row 3", "train.parquet:row 4"]


def test_data_convert_command_prints_the_task_table(shared_data, tmp_path, capsys):
    out = tmp_path / "ovo.jsonl"
    main(["data", "convert", "--from", "ovo", str(shared_data / "ovo_bench" / "ovo_bench_new.json"), str(out),
          "--video-root", str(tmp_path / "none")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "1640 entries" in printed and "REC" in printed and "698" in printed
    assert "1675 streams name a missing video" in printed
    rows, bad = read_rows(out)
    assert len(rows) == 1675 and not bad


def test_bad_benchmark_entries_are_named(tmp_path):
    src = tmp_path / "ovo.json"
    src.write_text(json.dumps([{"id": 1, "task": "EPM", "video": "v.mp4", "realtime": 3, "question": "q",
                                "options": ["a", "b"], "gt": 5}, {"id": 2, "task": "XYZ"}]))  # fmt: skip
    report = read_source("ovo", src)
    assert [e.where for e in report.errors] == ["ovo.json[0]", "ovo.json[1]"]
    assert "gt 5" in str(report.errors[0]) and "unknown OVO-Bench task 'XYZ'" in str(report.errors[1])
    src.write_text(json.dumps([{"video_path": "v.mp4", "questions": [{"question": "q", "answer": "A",
                                "options": ["A. x"] * 4, "time_stamp": "soon"}]}]))  # fmt: skip
    (err,) = read_source("streamingbench-real", src).errors
    assert err.where == "ovo.json[0].questions[0]" and "time stamp 'soon'" in str(err)
    with pytest.raises(ConfigError, match="unknown format 'csv'; expected one of thinkstream, "):
        read_source("csv", src)
    with pytest.raises(RowError, match="no such file") as missing:
        read_source("ovo", tmp_path / "nope.json")
    assert missing.value.where == str(tmp_path / "nope.json")
    assert streamingbench.build_prompt({"question": "q", "options": ["x", "y", "z", "w"]}).count("A. x") == 1


def test_data_convert_command_names_a_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as ended:
        main(["data", "convert", "--from", "ovo", str(tmp_path / "nope.json"), str(tmp_path / "out.jsonl")])
    assert ended.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: row {tmp_path / 'nope.json'}: no such file"
