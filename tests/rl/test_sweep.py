"""Sweeps: grid expansion, a 2x2 local sweep of the tiny recipe, skip / resume / retry on rerun,
a failing trial, and a 2-trial sweep through Ray Jobs against a local Ray head."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamreason.cli import main
from streamreason.errors import ConfigError
from streamreason.rl.metrics import read_metrics
from streamreason.rl.sweep import Dist, Sweep, expand, parse_grid

from .conftest import RECIPE

FEW_STEPS = ["trainer.steps=2", "trainer.checkpoint_every=1"]


def test_grid_expands_to_the_product_in_spec_order():
    grid = parse_grid(["optim.lr=1e-6, 5e-7", "rollout.group_size=4,8"])
    assert expand(grid) == [
        {"optim.lr": "1e-6", "rollout.group_size": "4"}, {"optim.lr": "1e-6", "rollout.group_size": "8"},
        {"optim.lr": "5e-7", "rollout.group_size": "4"}, {"optim.lr": "5e-7", "rollout.group_size": "8"}]  # fmt: skip
    picks = expand(grid, random=3, seed=1)
    assert len(picks) == 3 and len({tuple(p.values()) for p in picks}) == 3  # distinct combinations
    assert picks == expand(grid, random=3, seed=1) and all(p in expand(grid) for p in picks)
    assert len(expand(grid, random=10)) == 4  # no more than the grid holds


def test_random_draws_from_distributions():
    grid = parse_grid(
        ["optim.lr=loguniform(1e-7,1e-5)", "rollout.group_size=randint(2,4)", "rl.kl_coef=0,0.01"]
    )
    assert grid["optim.lr"] == Dist("loguniform", 1e-7, 1e-5)
    trials = expand(grid, random=40, seed=0)
    lrs = np.array([float(t["optim.lr"]) for t in trials])
    assert ((lrs >= 1e-7) & (lrs < 1e-5)).all() and (lrs < 1e-6).any() and (lrs > 1e-6).any()
    assert {t["rollout.group_size"] for t in trials} == {"2", "3", "4"}
    assert {t["rl.kl_coef"] for t in trials} == {"0", "0.01"}


@pytest.mark.parametrize(
    "specs, random, match",
    [
        (["optim.lr"], None, "expected KEY=V1,V2"),
        (["optim.lr=1e-6,,2e-6"], None, "an empty value"),
        (["optim.lr=1,2", "optim.lr=3"], None, "swept twice"),
        (["optim.lr=loguniform(0,1)"], 2, "low > 0"),
        (["optim.lr=uniform(a,1)"], 2, "must be numbers"),
        (["optim.lr=uniform(0,1)"], None, "needs --random"),
    ],
)
def test_bad_grid_specs_are_named(specs, random, match):
    with pytest.raises(ConfigError, match=match):
        expand(parse_grid(specs), random)


def test_unknown_key_stops_the_sweep_before_any_trial(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", RECIPE, "--grid", "optim.lrr=1e-4,1e-3", "--out", str(tmp_path / "sw")])
    err = capsys.readouterr().err
    assert "trial t000 (optim.lrr=1e-4)" in err and "did you mean 'optim.lr'" in err
    assert not (tmp_path / "sw" / "trials").exists()


def _sweep(tmp_path, small_overrides, *args, out="sw"):
    base = [o for o in small_overrides if not o.startswith("trainer.run_dir=")]
    main(["sweep", RECIPE, *args, "--out", str(tmp_path / out), *base, *FEW_STEPS])
    return Sweep.open(tmp_path / out)


def test_local_grid_sweep_reruns_skip_finished_and_resume_interrupted(small_overrides, tmp_path, capsys):
    sweep = _sweep(tmp_path, small_overrides, "--grid", "optim.lr=1e-4,5e-4", "--grid", "rl.clip_ratio_high=0.2,0.28",
                   "--parallel", "2")  # fmt: skip
    table = capsys.readouterr().out
    assert [t.params for t in sweep.trials] == expand(
        parse_grid(["optim.lr=1e-4,5e-4", "rl.clip_ratio_high=0.2,0.28"])
    )
    for t in sweep.trials:
        assert t.finished and t.status()["attempts"] == 1, t.status()
        assert sorted(r["step"] for r in read_metrics(t.run_dir / "metrics.jsonl") if "loss" in r) == [1, 2]
        cfg = (t.run_dir / "config.yaml").read_text()
        assert (
            f"lr: {float(t.params['optim.lr'])}" in cfg
            and f"clip_ratio_high: {t.params['rl.clip_ratio_high']}" in cfg
        )
    rows = (sweep.dir / "sweep.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 5 and {
        "optim.lr",
        "rl.clip_ratio_high",
        "final eval/reward",
        "best eval/reward",
    } <= set(header)
    assert all((sweep.dir / f).stat().st_size > 10_000 for f in ("sweep_curves.png", "sweep_params.png"))
    assert "4 trials, best first by final eval/reward" in table and table.count("finished") == 4

    # interrupt t001 as a preemption would: its step-2 checkpoint, final model and step-2 metrics gone
    t1 = sweep.trials[1]
    (t1.run_dir / "final").rename(tmp_path / "final_t001")
    for ckpt in (t1.run_dir / "checkpoints").glob("step_00000002*"):
        ckpt.rename(tmp_path / ckpt.name)
    t1.write_status(state="running")
    logs = {t.id: (t.dir / "train.log").stat().st_mtime_ns for t in sweep.trials}
    _sweep(tmp_path, small_overrides, "--grid", "optim.lr=1e-4,5e-4", "--grid", "rl.clip_ratio_high=0.2,0.28")
    for t in sweep.trials:  # only the interrupted trial ran again, from its step-1 checkpoint
        again = t.id == "t001"
        assert ((t.dir / "train.log").stat().st_mtime_ns != logs[t.id]) == again, t.id
        assert t.finished and t.status()["attempts"] == 1 + again
    assert t1.status()["resumed"] and "--resume" in t1.status()["command"]
    steps = [r["step"] for r in read_metrics(t1.run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2]  # no lost and no duplicated step

    with pytest.raises(SystemExit):  # the folder belongs to this sweep
        main(["sweep", RECIPE, "--grid", "optim.lr=1e-3", "--out", str(sweep.dir)])
    assert "holds another sweep (it differs in grid, overrides)" in capsys.readouterr().err


def test_failed_trial_is_recorded_and_the_others_finish(small_overrides, tmp_path, capsys):
    sweep = _sweep(tmp_path, small_overrides, "--grid", f"data.eval={tmp_path / 'missing.jsonl'},"
                   + next(o for o in small_overrides if o.startswith("data.eval=")).split("=", 1)[1])  # fmt: skip
    out = capsys.readouterr().out
    bad, good = sweep.trials
    assert good.finished and bad.status()["state"] == "failed" and bad.status()["returncode"] != 0
    assert "missing.jsonl" in bad.status()["error"], bad.status()
    assert "1 trial(s) failed: t000" in out
    assert "missing.jsonl" in (sweep.dir / "sweep.csv").read_text()
    main(["sweep", "report", str(sweep.dir)])  # the report rebuilds from the folder alone
    assert "failed" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head():
    """A local Ray head with its dashboard (the Jobs API), started and stopped by the test."""
    import shutil
    import tempfile

    ray = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    port, dash = _free_port(), _free_port()
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }  # a throwaway local head
    start = subprocess.run([ray, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
                            f"--temp-dir={temp}"], capture_output=True, text=True, env=env, timeout=180)  # fmt: skip
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_launcher_runs_trials_on_a_cluster(small_overrides, tmp_path, ray_head, capsys):
    sweep = _sweep(tmp_path, small_overrides, "--grid", "optim.lr=1e-4,5e-4", "--launcher", "ray",
                   "--address", ray_head, "--trial-cpus", "1")  # fmt: skip
    for t in sweep.trials:
        assert t.finished, (t.status(), (t.dir / "train.log").read_text()[-2000:])
        log = (t.dir / "train.log").read_text()
        assert log.startswith("# Ray job ") and "SUCCEEDED" in log.splitlines()[0] and "GRPO finished" in log
    assert "2 trials" in capsys.readouterr().out


def test_ray_launcher_needs_an_address(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", RECIPE, "--grid", "optim.lr=1e-4", "--launcher", "ray", "--out", str(tmp_path / "s")])
    assert "--launcher ray needs --address" in capsys.readouterr().err


def test_killed_sweep_resumes_its_trial(small_overrides, tmp_path):
    """SIGKILL of the whole sweep (a preempted node) mid-trial, then the same command again."""
    base = [o for o in small_overrides if not o.startswith("trainer.run_dir=")]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "streamreason", "sweep", RECIPE, "--grid", "optim.lr=1e-4", "--out", str(out),
           *base, "trainer.steps=3", "trainer.checkpoint_every=1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "trials" / "t000" / "run" / "checkpoints" / "step_00000001" / "manifest.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists()
    status = json.loads((out / "trials" / "t000" / "status.json").read_text())
    assert status["state"] == "running" and not (out / "trials" / "t000" / "run" / "final").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (trial,) = Sweep.open(out).trials
    assert trial.finished and trial.status()["resumed"] and trial.status()["attempts"] == 2
    assert [r["step"] for r in read_metrics(trial.run_dir / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


class InProcessLauncher:
    """Runs each trial's ``python -m streamreason train ...`` in this process, as the local
    launcher's subprocess would (its output in the log, its exit code), so that a fake of verl's
    entry point stands in for verl."""

    def __init__(self, parallel: int):
        self.parallel = 1

    def run(self, cmd: list[str], log: Path) -> tuple[int, str | None]:
        import contextlib
        import traceback

        assert cmd[1:4] == ["-m", "streamreason", "train"], cmd
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                main(cmd[3:])
            except SystemExit as e:
                return int(e.code or 0), None
            except Exception:  # noqa: BLE001 - as a crashed subprocess: traceback and exit code 1
                traceback.print_exc()
                return 1, None
        return 0, None

    def stop(self) -> None:
        pass


def _fake_verl(fail_at: dict[float, int]):
    """verl's ``run_ppo`` as far as the run directory sees it: verl's file logger (verl's own
    class, reading ``VERL_FILE_LOGGER_PATH``) gets a line per step with verl's metric names, and a
    checkpoint per step (``global_step_N/actor/huggingface``, then the tracker file) as verl's
    ``_save_checkpoint`` writes them; resumes from the tracker's step as verl's ``auto`` mode
    does. Raises at step ``fail_at[lr]`` after its checkpoint."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
    from verl.utils.tracking import FileLogger

    def run_ppo(config, task_runner_class=None):
        root, lr = Path(config.trainer.default_local_dir), config.actor_rollout_ref.actor.optim.lr
        steps = config.trainer.total_training_steps
        resumed = find_latest_ckpt_path(str(root)) if config.trainer.resume_mode == "auto" else None
        start = int(resumed.rsplit("_", 1)[1]) if resumed else 0
        logger = FileLogger(config.trainer.project_name, config.trainer.experiment_name)
        for step in range(start + 1, steps + 1):
            data = {
                "critic/score/mean": 100 * lr * step,
                "actor/pg_loss": -0.01,
                "training/global_step": step,
            }
            if step == steps:  # the last step validates
                infos = {"reward": [200 * lr, 400 * lr], "reward/timing": [0.5, 0.5]}
                data |= PPOTrainer._val_metrics_update(None, ["streamreason"] * 2, ["a", "a"], infos, [3, 3])
            logger.log(data, step)
            hf = root / f"global_step_{step}" / "actor" / "huggingface"
            hf.mkdir(parents=True)
            (hf / "config.json").write_text("{}")
            (root / "latest_checkpointed_iteration.txt").write_text(str(step))
            if fail_at.get(lr) == step:
                raise RuntimeError(f"CUDA error: an illegal memory access was encountered (step {step})")
        logger.finish()

    return run_ppo


def test_verl_trials_finish_fail_and_resume_through_the_run_directory(
    tiny_model_dir, synth_splits, tmp_path, monkeypatch, capsys
):
    """``trainer.backend=verl`` trials, verl replaced by a fake that writes what verl writes: a
    completed run is a finished trial with its metrics in sweep.csv under our names; a crash
    is a failed trial, resumed from verl's checkpoint on the rerun."""
    import torch
    import verl.trainer.main_ppo

    from streamreason.rl import sweep as sweep_module
    from streamreason.rl.run_dir import RunDir

    fail_at = {5e-4: 2}
    monkeypatch.setattr(verl.trainer.main_ppo, "run_ppo", _fake_verl(fail_at))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sweep_module, "LocalLauncher", InProcessLauncher)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", "unused")  # train_verl sets both; restored after the test
    monkeypatch.setenv("TENSORBOARD_DIR", str(tmp_path / "tb"))
    train, evals = synth_splits
    cmd = ["sweep", RECIPE, "--grid", "optim.lr=1e-4,5e-4", "--out", str(tmp_path / "sw"), "trainer.backend=verl",
           f"model={tiny_model_dir}", f"data.train={train}", f"data.eval={evals}", "trainer.steps=2",
           "trainer.checkpoint_every=1", "trainer.eval_every=0", "trainer.eval_samples=2"]  # fmt: skip
    main(cmd)
    sweep = Sweep.open(tmp_path / "sw")
    good, bad = sweep.trials
    assert good.finished, (good.status(), (good.dir / "train.log").read_text()[-2000:])
    run = RunDir(good.run_dir)
    assert run.status()["backend"] == "verl" and run.status()["step"] == 2
    assert run.status()["final"] == "checkpoints/global_step_2/actor"  # shards: no HF weights saved
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert not bad.finished and bad.status()["state"] == "failed"
    assert "illegal memory access" in bad.status()["error"]
    assert RunDir(bad.run_dir).status()["state"] == "failed"
    assert RunDir(bad.run_dir).status()["error"].endswith("was encountered (step 2)")
    assert "1 trial(s) failed: t001" in capsys.readouterr().out

    fail_at.clear()  # the rerun: t000 is skipped, t001 resumes from verl's step-1 checkpoint
    log = (good.dir / "train.log").stat().st_mtime_ns
    main(cmd)
    assert (good.dir / "train.log").stat().st_mtime_ns == log
    assert bad.finished and bad.status()["resumed"] and "--resume" in bad.status()["command"]
    assert [(r["step"], r["reward"]) for r in RunDir(bad.run_dir).read_metrics()] == [
        (1, pytest.approx(0.05)), (2, pytest.approx(0.1))]  # fmt: skip
    import csv

    with open(sweep.dir / "sweep.csv") as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert [r["state"] for r in rows.values()] == ["finished", "finished"]
    assert list(rows) == ["t001", "t000"]  # best first by final eval/reward
    assert float(rows["t001"]["final eval/reward"]) == pytest.approx(0.15)
    assert float(rows["t000"]["final reward"]) == pytest.approx(0.02)
    assert float(rows["t000"]["final eval/reward/timing"]) == pytest.approx(0.5)
    assert rows["t000"]["steps"] == "2"
