"""The local trainer end to end: resume after a kill, torchrun on 2 CPU processes, config errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from streamreason.cli import main
from streamreason.rl.metrics import read_metrics

from .conftest import RECIPE, _small

# Wall-clock figures differ between runs; everything else must match exactly.
TIMING = {"time", "step_time_s", "rollout_s", "update_s", "rollout_tokens_per_s", "train_tokens_per_s"}


def _train(overrides, *extra, env=None, wait=True):
    cmd = [sys.executable, "-m", "streamreason", "train", RECIPE, *overrides, *extra]
    env = {**os.environ, **(env or {})}
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _steps(run_dir):
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir / "metrics.jsonl")
            if not any(k.startswith("eval/") for k in r)}  # fmt: skip


def test_kill_then_resume_matches_an_uninterrupted_run(small_overrides, tmp_path):
    base = [*small_overrides, "trainer.steps=4", "trainer.checkpoint_every=2"]
    straight = tmp_path / "straight"
    done = _train([*base, f"trainer.run_dir={straight}"])
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tmp_path / "killed"
    proc = _train([*base, f"trainer.run_dir={killed}"], wait=False)
    manifest = killed / "checkpoints" / "step_00000002" / "manifest.json"
    deadline = time.time() + 300
    while not manifest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert manifest.exists()
    assert not (killed / "checkpoints" / "step_00000004").exists()  # killed mid-run
    resumed = _train([*base, f"trainer.run_dir={killed}"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _steps(straight), _steps(killed)
    assert sorted(b) == [1, 2, 3, 4]  # no lost and no duplicated step
    for step in (3, 4):
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-9), step
    assert (killed / "final" / "model.safetensors").is_file()


def test_torchrun_two_cpu_processes(small_overrides, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "streamreason", "train",
           RECIPE, *small_overrides, "trainer.steps=2", "trainer.checkpoint_every=2", f"trainer.run_dir={run}"]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    steps = _steps(run)
    assert sorted(steps) == [1, 2]
    assert all(s["loss"] == s["loss"] and s["grad_norm"] > 0 for s in steps.values() if "loss" in s)
    assert (run / "checkpoints" / "step_00000002" / "manifest.json").is_file()
    assert (run / "final" / "model.safetensors").is_file()


def test_unknown_key_names_the_closest_valid_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", RECIPE, "rl.clip_ratio_hgh=0.3"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "unknown config key 'rl.clip_ratio_hgh'" in err and "did you mean 'rl.clip_ratio_high'" in err


def test_metrics_cover_the_documented_set(small_overrides, tmp_path):
    run = tmp_path / "m"
    done = _train([*small_overrides, "trainer.steps=1", f"trainer.run_dir={run}", "trainer.tensorboard=true"])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(run / "metrics.jsonl")
    train, evals = rows[0], rows[-1]
    for key in ("reward", "reward/timing", "reward/correctness", "accuracy", "response_rate", "think_tokens",
                "pg_clipfrac", "entropy", "grad_norm", "rollout_tokens_per_s", "step_time_s", "reward_std"):  # fmt: skip
        assert key in train, key
    assert "eval/reward" in evals and "eval/reward_stderr" in evals
    assert list((run / "tensorboard").iterdir())
    assert json.loads((run / "checkpoints" / "step_00000001" / "manifest.json").read_text())


def test_sigterm_checkpoints_and_stops(small_overrides, tmp_path):
    run = tmp_path / "term"
    proc = _train(
        [*small_overrides, "trainer.steps=50", "trainer.checkpoint_every=0", f"trainer.run_dir={run}"],
        wait=False,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while (not metrics.exists() or not metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    ckpts = sorted((run / "checkpoints").iterdir())
    assert len(ckpts) == 1 and (ckpts[0] / "manifest.json").is_file()
    stopped_at = int(ckpts[0].name.split("_")[1])
    assert 1 <= stopped_at < 50 and max(_steps(run)) == stopped_at


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_crashing_custom_reward_skips_its_trajectories_or_fails_fast(small_overrides, tmp_path, on_error):
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        "def flaky(episode):\n"
        "    if int(episode.row_id[-1]) % 2:\n"
        "        raise ZeroDivisionError('boom')\n"
        "    return 1.0\n"
    )
    run = tmp_path / on_error
    done = _train([*small_overrides, "trainer.steps=3", "trainer.checkpoint_every=0", f"trainer.run_dir={run}",
                   f"rewards.custom.flaky={flaky}:flaky", f"rewards.on_error={on_error}"])  # fmt: skip
    reason = "reward 'flaky' failed on row 'synth-00000"
    if on_error == "raise":
        assert done.returncode == 1
        assert f"error: {reason}" in done.stderr and "ZeroDivisionError: boom" in done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]
    steps = _steps(run)
    assert sorted(steps) == [1, 2, 3]
    failed = sum(s["reward_failed"] for s in steps.values())
    assert failed > 0 and failed % 2 == 0  # whole groups of G = 2: a row's trajectories all fail
    assert done.stderr.count(f"skipped: {reason}") == failed  # each one logged with its reason
    assert (run / "final" / "model.safetensors").is_file()


def test_a_step_without_update_keeps_the_lr_schedule_on_the_step_index(
    small_overrides, synth_splits, tmp_path
):
    """Step 2's rows all fail their reward, so step 2 trains on nothing; steps 3 and 4 still use
    the cosine schedule's values at their own update indices, straight and after --resume."""
    import torch
    from transformers import get_scheduler

    from streamreason.rl.trainer import RowSampler
    from streamreason.types import read_rows

    rows, _ = read_rows(synth_splits[0])
    sampler = RowSampler(len(rows), seed=0)
    sampler.take(2)
    skipped = sorted(rows[i].id for i in sampler.take(2))
    gate = tmp_path / "gate.py"
    gate.write_text(
        f"def gate(episode):\n    if episode.row_id in {skipped!r}:\n        raise ValueError('gated')\n    return 0.0\n"
    )
    run = tmp_path / "lr"
    base = [*small_overrides, "trainer.steps=4", "trainer.checkpoint_every=2", "optim.schedule=cosine",
            "optim.warmup_ratio=0.25", f"rewards.custom.gate={gate}:gate"]  # fmt: skip
    done = _train([*base, f"trainer.run_dir={run}"])
    assert done.returncode == 0, done.stderr[-3000:]
    steps = _steps(run)
    assert "lr" not in steps[2] and steps[2]["reward_failed"] == 4  # 2 rows x G = 2, no update
    # the recipe's schedule over 4 steps x 2 updates (ppo_epochs 1 x mini_batches 2), warmup 2
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=5e-4)
    schedule = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(schedule.get_last_lr()[0])
        opt.step()
        schedule.step()
    for step in (1, 3, 4):  # a step logs the mean LR of its two updates 2(step-1), 2(step-1)+1
        assert steps[step]["lr"] == pytest.approx((lrs[2 * step - 2] + lrs[2 * step - 1]) / 2, rel=1e-9), step
    again = _resume_from_step_2(run, tmp_path / "resumed", base)
    for step in (3, 4):
        assert again[step]["lr"] == steps[step]["lr"], step


def _resume_from_step_2(run, copy, overrides):
    """Steps of a copy of the finished 4-step ``run`` resumed (``--resume``) from its step-2 checkpoint."""
    import shutil

    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step_00000004")
    shutil.rmtree(copy / "final")
    done = _train([*overrides, f"trainer.run_dir={copy}"], "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    steps = _steps(copy)
    assert sorted(steps) == [1, 2, 3, 4]
    return steps


@pytest.mark.gpu
def test_vllm_resume_matches_an_uninterrupted_run(tiny_model_dir, synth_splits, tmp_path):
    """The in-process vLLM engine: a run resumed from its step-2 checkpoint logs the same steps
    3 and 4 as the uninterrupted run (sampling included)."""
    pytest.importorskip("vllm")
    base = [*_small(tiny_model_dir, synth_splits, tmp_path / "unused"), "engine.name=vllm", "engine.device=cuda",
            "engine.dtype=bfloat16", "optim.dtype=bfloat16", "engine.gpu_memory_utilization=0.2",
            "engine.enforce_eager=true", "trainer.steps=4", "trainer.checkpoint_every=2"]  # fmt: skip
    run = tmp_path / "straight"
    done = _train([*base, f"trainer.run_dir={run}"])
    assert done.returncode == 0, done.stderr[-3000:]
    straight = _steps(run)
    again = _resume_from_step_2(run, tmp_path / "resumed", base)
    for step in (3, 4):
        assert again[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-9), step


def test_progress_bars_inside_a_step_and_quiet_when_off(small_overrides, tmp_path):
    shown = _train([*small_overrides, "trainer.steps=1", f"trainer.run_dir={tmp_path / 'on'}",
                    "rl.filter_zero_variance_groups=false"])  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "rollout turns" in shown.stderr and "turn/s" in shown.stderr  # the rollout's bar
    assert "update rows" in shown.stderr and "tokens_s=" in shown.stderr  # the update's bar
    quiet = _train([*small_overrides, "trainer.steps=1", f"trainer.run_dir={tmp_path / 'off'}",
                    "rl.filter_zero_variance_groups=false", "trainer.progress=false"])  # fmt: skip
    assert quiet.returncode == 0 and "grpo" in quiet.stderr
    assert "rollout turns" not in quiet.stderr and "update rows" not in quiet.stderr
