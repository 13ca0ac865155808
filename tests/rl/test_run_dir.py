"""The run-directory contract (``rl/run_dir.py``): status life cycle, atomic writes, finished
needs the final model, checkpoints and metrics of either backend."""

import json
import os
import threading
from pathlib import Path

import pytest
import yaml

import streamreason.recipes
from streamreason.config import load_config
from streamreason.errors import ConfigError
from streamreason.rl.checkpoint import save_checkpoint
from streamreason.rl.metrics import MetricsLogger
from streamreason.rl.run_dir import RunDir

RECIPE = Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(RECIPE, [])


def test_status_life_cycle(tmp_path, cfg):
    run = RunDir(tmp_path / "run")
    assert run.status() == {} and not run.holds_run() and not run.finished
    run.start(cfg, backend="local", steps=3)
    assert yaml.safe_load(run.config.read_text())["trainer"]["steps"] == cfg.trainer.steps
    status = run.status()
    assert {k: status[k] for k in ("state", "backend", "step", "steps", "final", "error")} == {
        "state": "running", "backend": "local", "step": 0, "steps": 3, "final": None, "error": None}  # fmt: skip
    assert run.holds_run() and status["started"] == status["updated"]
    run.update(2)
    assert run.status()["step"] == 2 and run.status()["updated"] >= status["updated"]
    run.stop()
    assert run.status()["state"] == "stopped" and not run.finished

    again = RunDir(tmp_path / "run")  # a resumed process: config.yaml stays, the step carries on
    run.config.write_text("# the run's own recipe\n")
    again.start(cfg, backend="local", steps=3, resume=True)
    assert run.config.read_text() == "# the run's own recipe\n"
    assert again.status()["state"] == "running" and again.status()["step"] == 2
    again.fail("RuntimeError: boom")
    assert again.status()["state"] == "failed" and again.status()["error"] == "RuntimeError: boom"


def test_finished_needs_the_final_model(tmp_path, cfg):
    run = RunDir(tmp_path)
    run.start(cfg, backend="local", steps=1)
    run.finish()
    assert run.status()["state"] == "finished" and run.status()["final"] == "final"
    assert not run.finished  # no final/ folder
    run.final.mkdir()
    assert run.finished
    verl_final = run.checkpoints / "global_step_1" / "actor"
    run.finish(final=verl_final)
    assert run.status()["final"] == "checkpoints/global_step_1/actor" and not run.finished
    verl_final.mkdir(parents=True)
    assert run.finished
    run.fail("later error")
    assert not run.finished


def test_a_folder_from_before_the_status_file_is_finished_by_its_final_model(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text('{"step": 1, "reward": 0.5}\n')
    assert run.holds_run() and not run.finished
    run.final.mkdir()
    assert run.finished


def test_status_is_replaced_atomically(tmp_path, cfg, monkeypatch):
    run = RunDir(tmp_path)
    run.start(cfg, backend="verl", steps=1000)
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            seen.append(json.loads(run.status_file.read_text())["step"])  # never a torn file

    reader = threading.Thread(target=read)
    reader.start()
    for step in range(1, 300):
        run.update(step)
    stop.set()
    reader.join()
    assert seen and seen == sorted(seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "status.json"]  # no temp file left

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)  # a crash before the rename leaves the old status
    with pytest.raises(OSError):
        run.finish()
    assert run.status()["state"] == "running" and run.status()["step"] == 299


def test_bad_status_file_is_named(tmp_path):
    (tmp_path / "status.json").write_text("{not json")
    with pytest.raises(ConfigError, match="status.json: not valid JSON"):
        RunDir(tmp_path).status()


def test_latest_checkpoint_of_each_backend(tmp_path, cfg):
    local = RunDir(tmp_path / "local")
    assert local.latest_checkpoint() is None
    save_checkpoint(local.path, 1, {"trainer": {"step": 1}})
    save_checkpoint(local.path, 2, {"trainer": {"step": 2}})
    assert local.latest_checkpoint() == local.checkpoints / "step_00000002"

    verl = RunDir(tmp_path / "verl")
    verl.start(cfg, backend="verl", steps=4)
    for step in (2, 4):
        (verl.checkpoints / f"global_step_{step}" / "actor").mkdir(parents=True)
    assert verl.latest_checkpoint() is None  # no tracker: verl's save never completed
    (verl.checkpoints / "latest_checkpointed_iteration.txt").write_text("2")
    assert verl.latest_checkpoint() == verl.checkpoints / "global_step_2"  # what verl resumes from
    assert RunDir(verl.path).latest_checkpoint() == verl.checkpoints / "global_step_2"
    verl.status_file.unlink()  # told apart by the layout alone too
    assert verl.backend == "verl" and local.backend == "local"


def _verl_line(step, **data):
    return json.dumps({"step": step, "data": data}) + "\n"


def test_read_metrics_gives_the_same_records_for_both_backends(tmp_path, cfg):
    local = RunDir(tmp_path / "local")
    with pytest.raises(FileNotFoundError):
        local.read_metrics()
    with MetricsLogger(local.path, tensorboard=False) as m:
        m.log(1, {"reward": 0.25})
        m.log(1, {"reward": 0.5}, prefix="eval/")
    assert [{k: v for k, v in r.items() if k != "time"} for r in local.read_metrics()] == [
        {"step": 1, "reward": 0.25}, {"step": 1, "eval/reward": 0.5}]  # fmt: skip

    verl = RunDir(tmp_path / "verl")
    verl.start(cfg, backend="verl", steps=2)
    verl.verl_metrics.write_text(
        _verl_line(1, **{"critic/score/mean": 0.25, "actor/pg_loss": -0.1})
        + _verl_line(2, **{"critic/score/mean": 0.5, "val-core/streamreason/reward/mean@2": 0.75})
    )
    records = verl.read_metrics()
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["reward"] == 0.25 and records[0]["actor/pg_loss"] == -0.1
    assert records[1]["reward"] == 0.5 and records[1]["eval/reward"] == 0.75


def test_verl_metrics_survive_a_resume(tmp_path, cfg):
    """verl's file logger empties its file when it starts: the lines up to the checkpoint a
    resume starts from are kept aside, and read back first."""
    run = RunDir(tmp_path)
    run.start(cfg, backend="verl", steps=4)
    run.verl_metrics.write_text(
        "".join(_verl_line(s, **{"critic/score/mean": s / 10}) for s in (1, 2, 3)) + '{"st'
    )
    run.keep_verl_metrics(2)  # resuming from global_step_2: step 3 will be logged again
    assert not run.verl_metrics.exists()
    run.verl_metrics.write_text("".join(_verl_line(s, **{"critic/score/mean": s}) for s in (3, 4)))
    assert [(r["step"], r["reward"]) for r in run.read_metrics()] == [(1, 0.1), (2, 0.2), (3, 3), (4, 4)]
    run.keep_verl_metrics(3)  # a second resume keeps the first attempt's lines too
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    run.keep_verl_metrics(0)  # no checkpoint: verl starts over
    assert not run.verl_metrics_before_resume.exists()
