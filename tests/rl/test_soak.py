"""Soak (marked slow, not in CI): a long GRPO run of the tiny model on CPU under injected faults.

The run is ``streamreason train`` itself, started as a subprocess, while this test watches it
from outside and breaks things the way a shared cluster does:

- 10% of the train rows name corrupt videos (random bytes, an empty file, a truncated file, noise
  over the middle of the file; missing files are tested in tests/envs), and a few lines of the
  JSONL are malformed;
- a custom reward (weight 0) crashes on every trajectory of two rows (``rewards.on_error=skip``);
- the trainer and everything it started are SIGKILLed mid-step (a preempted node), then the run is
  resumed with ``--resume``;
- after the resume, an env worker (a Ray actor process) is SIGKILLed every 40 steps.

It asserts that the run completes its steps exactly once each, that the skipped rows, failed
rewards, malformed lines and worker restarts the metrics report equal what was injected (the
expected counts come from replaying the trainer's seeded row order), and that resident memory
stays flat. It writes ``soak.json`` (figures, RSS samples) and ``soak_rss.png`` to ``$SOAK_OUT``
(default: the test's temp folder), the figures of docs/reliability.md (``SOAK_STEPS`` sets the
number of steps, 200 by default)::

    SOAK_OUT=runs/soak .venv/bin/python -m pytest -m slow tests/rl/test_soak.py -s
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from streamreason.rl.metrics import read_metrics
from streamreason.rl.trainer import RowSampler
from streamreason.types import read_rows

from .conftest import RECIPE

pytestmark = pytest.mark.slow

STEPS = int(os.environ.get("SOAK_STEPS", 200))
ROWS, CORRUPT, MALFORMED = 40, 4, 3  # 10% of the rows corrupt
ROWS_PER_STEP, GROUP = 4, 4
CHECKPOINT_EVERY = 25
PREEMPT_AFTER_STEP = 35  # SIGKILL of the trainer's process group while step 36 runs
WORKER_KILL_STEPS = tuple(range(60, STEPS, 40))  # after the resume: one env worker SIGKILLed after each
FLAKY_ROWS = ("synth-000005", "synth-000006")  # the custom reward crashes on these rows


def _corrupt(videos: list[Path], rng: np.random.Generator) -> list[str]:
    """Damage ``videos`` in place, one way each, in turn; returns the kinds."""
    kinds = []
    for i, path in enumerate(videos):
        data = path.read_bytes()
        third = len(data) // 3
        damaged = {"random-bytes": rng.bytes(len(data)), "empty": b"", "truncated": data[: third * 2],
                   "noise-in-middle": data[:third] + rng.bytes(third) + data[2 * third :]}  # fmt: skip
        kind = list(damaged)[i % len(damaged)]
        path.write_bytes(damaged[kind])
        kinds.append(kind)
    return kinds


def _dataset(root: Path) -> tuple[Path, Path, dict]:
    from streamreason.envs.synthetic import synthesize

    train = synthesize(root / "train", n=ROWS, seed=0, min_seconds=6, max_seconds=8)
    evals = synthesize(root / "eval", n=4, seed=1, min_seconds=6, max_seconds=8)
    rows, _ = read_rows(train)
    rng = np.random.default_rng(0)
    bad = [rows[i] for i in rng.choice(len(rows), CORRUPT, replace=False)]
    kinds = _corrupt([Path(r.video_path) for r in bad], rng)
    lines = train.read_text().splitlines()
    for k, junk in enumerate(
        ['{"video_path": ', '["not", "a", "row"]', '{"video_path": "x.mp4"}'][:MALFORMED]
    ):
        lines.insert(7 * (k + 1), junk)
    train.write_text("\n".join(lines) + "\n")
    return train, evals, {"corrupt_rows": sorted(r.id for r in bad), "corrupt_kinds": kinds}


class Monitor(threading.Thread):
    """Samples the RSS of the trainer and of its env workers every ``period_s`` seconds, follows
    the run's last logged step, and SIGKILLs one env worker after each step in ``kill_steps``."""

    def __init__(
        self, proc: subprocess.Popen, metrics: Path, t0: float, kill_steps=(), period_s: float = 1.0
    ):
        super().__init__(daemon=True)
        self.proc, self.metrics, self.t0, self.period_s = proc, metrics, t0, period_s
        self.kill_steps = sorted(kill_steps)
        self.samples: list[dict] = []
        self.kills: list[tuple[int, float]] = []  # (step, seconds since t0)
        self.step = 0
        self.stop = threading.Event()

    def last_step(self) -> int:
        rows = read_metrics(self.metrics) if self.metrics.exists() else []
        return max((r["step"] for r in rows if not any(k.startswith("eval/") for k in r)), default=0)

    def run(self):
        while not self.stop.wait(self.period_s):
            try:
                trainer = psutil.Process(self.proc.pid)
                workers = [
                    p for p in trainer.children(recursive=True) if "EnvWorker" in " ".join(p.cmdline())
                ]
                rss_workers = sum(p.memory_info().rss for p in workers)
                rss = trainer.memory_info().rss
            except psutil.Error:  # the process (or a worker) went away between two calls
                continue
            self.step = self.last_step()
            self.samples.append({"t_s": round(time.monotonic() - self.t0, 1), "step": self.step,
                                 "trainer_mib": rss / 2**20, "env_workers_mib": rss_workers / 2**20,
                                 "env_workers": len(workers)})  # fmt: skip
            if self.kill_steps and self.step >= self.kill_steps[0] and workers:
                self.kill_steps.pop(0)
                os.kill(workers[0].pid, signal.SIGKILL)
                self.kills.append((self.step, round(time.monotonic() - self.t0, 1)))


def _train(overrides: list[str], *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamreason", "train", RECIPE, *overrides, *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _expected(train: Path, corrupt: list[str]) -> dict[str, list[int]]:
    """Per step, the corrupt rows and flaky-reward rows the trainer's seeded order draws."""
    rows, _ = read_rows(train)
    sampler = RowSampler(len(rows), seed=0)
    out = {"rows_failed": [], "reward_failed": []}
    for _ in range(STEPS):
        ids = [rows[i].id for i in sampler.take(ROWS_PER_STEP)]
        out["rows_failed"].append(sum(i in corrupt for i in ids))
        out["reward_failed"].append(GROUP * sum(i in FLAKY_ROWS for i in ids))
    return out


def test_soak(sft_model_dir, tmp_path):
    out = Path(os.environ.get("SOAK_OUT", tmp_path / "out"))
    out.mkdir(parents=True, exist_ok=True)
    train, evals, injected = _dataset(tmp_path / "data")
    assert not set(injected["corrupt_rows"]) & set(FLAKY_ROWS)
    flaky = tmp_path / "flaky.py"
    flaky.write_text(f"def flaky(episode):\n    if episode.row_id in {FLAKY_ROWS!r}:\n"
                     "        raise RuntimeError('injected crash')\n    return 0.0\n")  # fmt: skip
    run = tmp_path / "run"
    overrides = [
        f"model={sft_model_dir}", f"data.train={train}", f"data.eval={evals}", f"trainer.run_dir={run}",
        f"trainer.steps={STEPS}", f"trainer.rows_per_step={ROWS_PER_STEP}", f"rollout.group_size={GROUP}",
        f"trainer.checkpoint_every={CHECKPOINT_EVERY}", "trainer.eval_every=50", "trainer.eval_samples=1",
        "rollout.env.max_chunks=8", "rollout.protocol.max_new_tokens=12", "trainer.tensorboard=false",
        f"rewards.custom.flaky={flaky}:flaky", "rewards.weights.flaky=0", "rewards.on_error=skip",
    ]  # fmt: skip
    t0 = time.monotonic()
    first = _train(overrides)
    mon = Monitor(first, run / "metrics.jsonl", t0)
    mon.start()
    while mon.step < PREEMPT_AFTER_STEP and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, first.stderr.read()[-4000:]
    time.sleep(1.0)  # into the next step
    # the trainer, its Ray head and its env workers: a lost node
    everything = [first.pid, *(p.pid for p in psutil.Process(first.pid).children(recursive=True))]
    os.killpg(first.pid, signal.SIGKILL)
    for pid in everything:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    first.wait()
    preempted = (mon.step, round(time.monotonic() - t0, 1))
    mon.stop.set()
    mon.join()
    second = _train(overrides, "--resume")
    mon2 = Monitor(second, run / "metrics.jsonl", t0, kill_steps=WORKER_KILL_STEPS)
    mon2.start()
    _, err = second.communicate(timeout=4 * 3600)
    mon2.stop.set()
    mon2.join()
    wall_s = time.monotonic() - t0
    assert second.returncode == 0, err[-4000:]

    lines = read_metrics(run / "metrics.jsonl")
    steps = [r for r in lines if not any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))  # none lost, none twice
    want = _expected(train, injected["corrupt_rows"])
    got_rows = [int(r["rows_failed"]) for r in steps]
    got_rewards = [int(r["reward_failed"]) for r in steps]
    assert got_rows == want["rows_failed"]
    assert got_rewards == want["reward_failed"]
    assert {r["rows_malformed"] for r in steps} == {MALFORMED}
    assert mon2.kills and steps[-1]["env_restarts"] == len(mon2.kills)
    assert (run / "final" / "model.safetensors").is_file()

    # Flat memory: after warm-up, the late RSS of the resumed trainer is within 10% of its early RSS.
    rss = [(s["step"], s["trainer_mib"], s["env_workers_mib"]) for s in mon2.samples]
    early = [m for st, m, _ in rss if 50 <= st < 80]
    late = [m for st, m, _ in rss if st >= STEPS - 30]
    growth = float(np.median(late) / np.median(early) - 1)
    assert growth < 0.10, f"trainer RSS grew {growth:.1%} from steps 50-80 to the last 30 steps"

    updates = sum(1 for r in steps if "grad_norm" in r)
    report = {
        "steps": STEPS, "wall_s": round(wall_s, 1), "updates": updates, "rows": ROWS, "rows_per_step": ROWS_PER_STEP,
        "group_size": GROUP, "rows_tried": STEPS * ROWS_PER_STEP, "trajectories_tried": STEPS * ROWS_PER_STEP * GROUP,
        **injected, "malformed_lines": MALFORMED, "flaky_reward_rows": list(FLAKY_ROWS),
        "rows_skipped": sum(got_rows), "rewards_failed": sum(got_rewards),
        "skipped_nonfinite": sum(r.get("skipped_nonfinite", 0) for r in steps),
        "preempted_after_step": preempted[0], "preempted_at_s": preempted[1],
        "resumed_from_step": CHECKPOINT_EVERY * (preempted[0] // CHECKPOINT_EVERY),
        "env_worker_kills": [{"after_step": k, "at_s": t} for k, t in mon2.kills], "env_restarts": steps[-1]["env_restarts"],
        "trainer_rss_growth": growth, "final_eval_reward": next(r["eval/reward"] for r in reversed(lines) if "eval/reward" in r),
        "rss_samples": {"first": mon.samples, "resumed": mon2.samples},
    }  # fmt: skip
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    _plot(report, out / "soak_rss.png")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=1))


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, samples in report["rss_samples"].items():
        t = [s["t_s"] / 60 for s in samples]
        ax.plot(t, [s["trainer_mib"] for s in samples], label=f"trainer ({name} process)")
        ax.plot(t, [s["env_workers_mib"] for s in samples], "--", label=f"env workers, all ({name})")
    ax.axvline(report["preempted_at_s"] / 60, color="red", lw=0.8, label="trainer SIGKILL, then --resume")
    for i, kill in enumerate(report["env_worker_kills"]):
        ax.axvline(
            kill["at_s"] / 60, color="grey", lw=0.8, ls=":", label="env worker SIGKILL" if i == 0 else None
        )
    ax.set(xlabel="minutes since the start", ylabel="RSS (MiB)",
           title=f"soak: {report['steps']} GRPO steps, resident memory")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
