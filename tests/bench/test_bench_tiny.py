"""The benchmarks' --tiny CPU smoke runs: each script runs end to end and its table holds
sane figures (the benchmarks themselves run on the GPU, docs/performance.md)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _result(name, tmp_path, monkeypatch, *extra) -> dict:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / f"{name}.json"
    module.main(["--tiny", "--work", str(tmp_path / "work"), "--out", str(out), *extra])
    result = json.loads(out.read_text())
    assert result["tiny"] and result["command"].startswith("python ") and "torch" in result["device"]
    result["rows"] = [dict(zip(result["columns"], r, strict=True)) for r in result["rows"]]
    return result


def _run(name, tmp_path, monkeypatch):
    return _result(name, tmp_path, monkeypatch)["rows"]


def test_rollout_throughput_generates_fixed_length_turns(tmp_path, monkeypatch):
    result = _result("rollout_throughput", tmp_path, monkeypatch, "--profile", "3")
    (row,) = result["rows"]
    assert row["engine, memory"] == "transformers, W=20" and row["x transformers, W=20"] == 1.0
    assert row["gen tokens/s"] / row["turns/s"] == pytest.approx(30)  # 30 tokens every turn
    assert row["video-s/s"] == pytest.approx(row["turns/s"])  # 1 s chunks
    (notes,) = result["notes"]  # --profile 3: the three costliest functions, the rollout itself first
    assert notes.startswith("profile, transformers, W=20:") and len(notes.splitlines()) == 4


def test_latency_reports_each_mark_and_stream_count(tmp_path, monkeypatch):
    rows = _run("latency", tmp_path, monkeypatch)
    assert [(r["streams"], r["video min"]) for r in rows] == [
        ("1 stream(s)", 0.05), ("1 stream(s)", 0.1), ("2 stream(s)", 0.05), ("2 stream(s)", 0.1)]  # fmt: skip
    assert all(0 < r["p50 ms"] <= r["p95 ms"] and r["context tokens"] > 0 for r in rows)


def test_prefix_reuse_grows_with_the_eviction_block(tmp_path, monkeypatch):
    rows = _run("prefix_reuse", tmp_path, monkeypatch)
    assert [r["B"] for r in rows] == [1, 4, 8]
    share = [r["shareable prefix % (memory)"] for r in rows]
    assert 0 < share[0] < share[1] < share[2] <= 100
    assert all(r["vLLM cached % of prompt tokens"] is None or math.isnan(r["vLLM cached % of prompt tokens"])
               for r in rows)  # fmt: skip


def test_learner_variants_give_the_same_update(tmp_path, monkeypatch):
    rows = _run("learner", tmp_path, monkeypatch)
    assert [r["variant"] for r in rows] == [
        "per-row-2",
        "per-row-1",
        "shared-2",
        "shared-1",
        "shared-1-nockpt",
    ]
    for row in rows:
        assert row["rows"] > 0 and row["tokens"] > row["rows"] and row["tokens/s"] > 0
        assert math.isfinite(row["loss"]) and row["grad norm"] > 0
        assert 0 < row["vision fwd s"] < row["update s"] and row["scoring pass s"] > 0
    # the tower runs once per micro-batch, or once per update when shared
    assert [r["vision calls"] for r in rows[:2]] == [-(-rows[0]["rows"] // 2), rows[0]["rows"]]
    assert all(r["vision calls"] == 1 for r in rows[2:])
    # each variant starts from the previous one's weights (lr 1e-6): the losses agree closely
    assert max(r["loss"] for r in rows) - min(r["loss"] for r in rows) < 1e-3


def test_loop_overhead_lists_where_the_loop_spends_its_time(tmp_path, monkeypatch):
    rows = _run("loop_overhead", tmp_path, monkeypatch)
    assert (
        rows[0]["function"] == "whole loop" and rows[0]["% of loop"] == 100.0 and rows[0]["ms per step"] > 0
    )
    assert len(rows) > 2 and all(0 < r["% of loop"] <= 100 for r in rows)


def test_train_rows_packs_a_masked_trajectory_into_one_row(tmp_path, monkeypatch):
    rows = {r["memory"]: r for r in _run("train_rows", tmp_path, monkeypatch)}
    assert rows["mask, B=1"]["rows"] == 1 and rows["mask, B=1"]["x trajectory"] == 1.0
    assert rows["rewrite, B=1"]["rows"] > rows["rewrite, B=8"]["rows"] >= 1
    assert rows["rewrite, B=1"]["training tokens"] > rows["mask, B=1"]["training tokens"]
