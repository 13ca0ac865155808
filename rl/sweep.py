"""Hyperparameter sweeps: trials of ``streamreason train``, run locally or as Ray Jobs.

A sweep expands ``--grid KEY=V1,V2`` specs into trials (the full product, or ``--random N``
draws with ``--seed``; a random spec may also give a distribution: ``loguniform(a,b)``,
``uniform(a,b)``, ``randint(a,b)``). Every trial is ``streamreason train RECIPE`` with the base
overrides, its own values and ``trainer.run_dir=DIR/trials/<id>/run``; every trial's config is
loaded before anything launches, so an unknown key or bad value stops the sweep at once.

Layout of ``DIR``::

    sweep.json               the spec (recipe, overrides, grid, random, seed, metric) and trials
    trials/<id>/params.json  the trial's values
    trials/<id>/status.json  state (running | finished | failed), return code, error, times
    trials/<id>/train.log    the trial's stdout and stderr
    trials/<id>/run/         the trial's run directory (streamreason.rl.run_dir: status.json,
                             metrics, checkpoints, final model; either trainer.backend)
    sweep.csv, sweep_curves.png, sweep_params.png   the report (``streamreason sweep report DIR``)

A trial is finished when ``streamreason train`` exits 0 and its run directory says so
(``RunDir.finished``: status ``finished`` and the final model there), whichever backend trained
it. Rerunning the same command skips finished trials, resumes interrupted ones from their newest
checkpoint (``RunDir.latest_checkpoint``, ``--resume``; from scratch when they have none) and
retries failed ones. A trial that fails is recorded with its error and never stops the others.
The report reads each trial's metrics through ``RunDir.read_metrics``: the same records, reward
metrics under the same names, for local and verl trials.

Launchers: ``local`` runs K trials at once as subprocesses (``OMP_NUM_THREADS`` split between
them); ``ray`` submits each trial as a Ray Job (``ray.job_submission.JobSubmissionClient``) to
a cluster's dashboard address, K at a time, with ``--trial-cpus``/``--trial-gpus`` reserved for
its entrypoint, and copies its logs back. Jobs run ``cd <this folder> && python -m
streamreason train ...``: the cluster's nodes must see the recipe, the data and ``DIR`` at the
same paths (a shared filesystem), as Ray Jobs of any trainer do. A cluster with Ray's token
authentication needs Ray's own ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` in this process.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamreason.errors import ConfigError
from streamreason.rl.metrics import is_reward_metric
from streamreason.rl.run_dir import RunDir

_DIST = re.compile(r"^(loguniform|uniform|randint)\(\s*([^,\s]+)\s*,\s*([^)\s]+)\s*\)$")
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Dist:
    """A distribution a random sweep draws a value from: ``loguniform``/``uniform`` (floats in
    [low, high)) or ``randint`` (integers low..high inclusive)."""

    kind: str
    low: float
    high: float

    def draw(self, rng: np.random.Generator) -> str:
        if self.kind == "randint":
            return str(int(rng.integers(int(self.low), int(self.high), endpoint=True)))
        if self.kind == "uniform":
            return f"{rng.uniform(self.low, self.high):.6g}"
        return f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.6g}"


def parse_grid(specs: list[str]) -> dict[str, list[str] | Dist]:
    """``["optim.lr=1e-6,5e-7", "rollout.group_size=4,8"]`` → ``{key: values or Dist}``.

    Raises:
        ConfigError: a spec without ``=``, with an empty value, a key given twice, or a
            distribution with bounds that are not numbers (loguniform: positive, low < high).
    """
    grid: dict[str, list[str] | Dist] = {}
    for spec in specs:
        key, eq, rest = spec.partition("=")
        key, rest = key.strip(), rest.strip()
        if not eq or not key or not rest:
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,... or KEY=loguniform(a,b)")
        if key in grid:
            raise ConfigError(f"--grid {spec!r}: {key} is swept twice")
        if m := _DIST.match(rest):
            try:
                dist = Dist(m[1], float(m[2]), float(m[3]))
            except ValueError:
                raise ConfigError(f"--grid {spec!r}: the bounds of {m[1]} must be numbers") from None
            if not dist.low < dist.high or (dist.kind == "loguniform" and dist.low <= 0):
                raise ConfigError(
                    f"--grid {spec!r}: needs low < high" + (" and low > 0" * (m[1] == "loguniform"))
                )
            grid[key] = dist
            continue
        values = [v.strip() for v in rest.split(",")]
        if not all(values):
            raise ConfigError(f"--grid {spec!r}: an empty value")
        grid[key] = values
    return grid


def expand(
    grid: dict[str, list[str] | Dist], random: int | None = None, seed: int = 0
) -> list[dict[str, str]]:
    """Trials' values: the grid's full product in spec order, or ``random`` draws.

    Random draws of a grid of lists only are distinct combinations (all of them when
    ``random`` exceeds the product); with a distribution, each trial draws every key
    independently.

    Raises:
        ConfigError: a distribution without ``random``, or ``random < 1``.
    """
    keys = list(grid)
    if random is None:
        if any(isinstance(v, Dist) for v in grid.values()):
            raise ConfigError("--grid with a distribution needs --random N")
        return [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
    if random < 1:
        raise ConfigError(f"--random must be >= 1, got {random}")
    rng = np.random.default_rng(seed)
    if not any(isinstance(v, Dist) for v in grid.values()):
        product = list(itertools.product(*grid.values()))
        picks = rng.permutation(len(product))[:random]
        return [dict(zip(keys, product[i])) for i in sorted(picks)]
    return [{k: v.draw(rng) if isinstance(v, Dist) else v[rng.integers(len(v))] for k, v in grid.items()}
            for _ in range(random)]  # fmt: skip


@dataclass
class Trial:
    """One trial: its id (``t000``...), values and folder."""

    id: str
    params: dict[str, str]
    dir: Path

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    def status(self) -> dict[str, Any]:
        path = self.dir / "status.json"
        return json.loads(path.read_text()) if path.exists() else {"state": "pending", "attempts": 0}

    def write_status(self, **fields) -> None:
        status = {**self.status(), **fields}
        tmp = self.dir / "status.json.tmp"
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(self.dir / "status.json")

    @property
    def finished(self) -> bool:
        return self.status()["state"] == "finished" and RunDir(self.run_dir).finished

    def metrics(self) -> list[dict[str, Any]]:
        """The trial's metric records (``RunDir.read_metrics``); [] before its first."""
        try:
            return RunDir(self.run_dir).read_metrics()
        except FileNotFoundError:
            return []


class Sweep:
    """A sweep folder (module docstring): its spec and trials.

    Args:
        out: the folder.
        spec: ``recipe`` (absolute path), ``overrides``, ``grid``, ``random``, ``seed``, ``metric``.

    Raises:
        ConfigError: ``out`` holds a sweep with another spec.
    """

    def __init__(self, out: str | Path, spec: dict[str, Any]):
        self.dir = Path(out).resolve()
        self.spec = spec
        meta = self.dir / "sweep.json"
        if meta.exists():
            stored = json.loads(meta.read_text())
            if stored["spec"] != spec:
                changed = sorted(
                    k for k in set(spec) | set(stored["spec"]) if spec.get(k) != stored["spec"].get(k)
                )
                raise ConfigError(f"{self.dir} holds another sweep (it differs in {', '.join(changed)}): "
                                  "rerun it with its own arguments, or pass another --out")  # fmt: skip
        values = expand(parse_grid(spec["grid"]), spec["random"], spec["seed"])
        self.trials = [Trial(f"t{i:03d}", p, self.dir / "trials" / f"t{i:03d}") for i, p in enumerate(values)]

    @classmethod
    def open(cls, out: str | Path) -> Sweep:
        """An existing sweep folder (for ``sweep report``).

        Raises:
            ConfigError: no ``sweep.json`` in ``out``.
        """
        meta = Path(out) / "sweep.json"
        if not meta.exists():
            raise ConfigError(f"{out} is not a sweep folder (no sweep.json)")
        return cls(out, json.loads(meta.read_text())["spec"])

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for t in self.trials:
            t.dir.mkdir(parents=True, exist_ok=True)
            (t.dir / "params.json").write_text(json.dumps(t.params, indent=2))
        trials = [{"id": t.id, "params": t.params} for t in self.trials]
        (self.dir / "sweep.json").write_text(json.dumps({"spec": self.spec, "trials": trials}, indent=2))

    def command(self, trial: Trial, python: str) -> tuple[list[str], bool]:
        """The trial's ``streamreason train`` command, and whether it resumes.

        A run folder with a checkpoint resumes from it; one that holds a run but no checkpoint
        (killed before its first, or failed) is cleared and starts again.
        """
        run = RunDir(trial.run_dir)
        resume = False
        if run.holds_run():
            resume = run.latest_checkpoint() is not None
            if not resume:
                shutil.rmtree(trial.run_dir)
        cmd = [python, "-m", "streamreason", "train", self.spec["recipe"], *self.spec["overrides"],
               *(f"{k}={v}" for k, v in trial.params.items()), f"trainer.run_dir={trial.run_dir}"]  # fmt: skip
        return cmd + ["--resume"] * resume, resume


def check_trials(sweep: Sweep, load: Callable[[str, list[str]], Any]) -> None:
    """Load every trial's config as the trainer will, before anything runs.

    Args:
        sweep: the sweep.
        load: the trainer's config loader, ``load(recipe, overrides)`` (the CLI passes
            :func:`streamreason.config.load_config`, a layer above this package).

    Raises:
        ConfigError: naming the trial, and the key or value at fault.
    """
    for t in sweep.trials:
        overrides = [*sweep.spec["overrides"], *(f"{k}={v}" for k, v in t.params.items())]
        try:
            load(sweep.spec["recipe"], overrides)
        except ConfigError as e:
            raise ConfigError(f"trial {t.id} ({_label(t.params)}): {e}") from None


class LocalLauncher:
    """Runs trials as subprocesses of this process, ``parallel`` at a time."""

    def __init__(self, parallel: int):
        self.parallel = parallel
        self._live: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, cmd: list[str], log: Path) -> tuple[int, str | None]:
        """Run one trial; ``(return code, None)``, and the log holds its output."""
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            with self._lock:
                self._live.add(proc)
            code = proc.wait()
            with self._lock:
                self._live.discard(proc)
        return code, None

    def stop(self) -> None:
        """SIGTERM every running trial: the trainer checkpoints and exits, and a rerun resumes."""
        with self._lock:
            for proc in self._live:
                proc.terminate()


class RayJobLauncher:
    """Submits each trial as a Ray Job to ``address`` (a dashboard URL, e.g. ``http://head:8265``).

    Raises:
        ConfigError: the address does not answer as a Ray cluster's job server.
    """

    def __init__(
        self, address: str, parallel: int, cpus: float = 1.0, gpus: float = 0.0, poll_s: float = 1.0
    ):
        from ray.job_submission import JobSubmissionClient

        try:
            self.client = JobSubmissionClient(address)
        except Exception as e:  # noqa: BLE001 - connection errors of several kinds
            raise ConfigError(f"--address {address}: no Ray job server there ({e}); start one with "
                              "`ray start --head --dashboard-host 0.0.0.0` and pass its dashboard URL") from None  # fmt: skip
        self.parallel, self.cpus, self.gpus, self.poll_s = parallel, cpus, gpus, poll_s
        self._jobs: set[str] = set()

    def run(self, cmd: list[str], log: Path) -> tuple[int, str | None]:
        """Submit, wait and copy the logs; ``(0 or 1, the job's failure message)``."""
        entrypoint = f"cd {shlex.quote(os.getcwd())} && {shlex.join(cmd)}"
        job = self.client.submit_job(entrypoint=entrypoint, entrypoint_num_cpus=self.cpus,
                                     entrypoint_num_gpus=self.gpus or None)  # fmt: skip
        self._jobs.add(job)
        while (status := str(self.client.get_job_status(job)).rsplit(".", 1)[-1]) not in _TERMINAL:
            time.sleep(self.poll_s)
        self._jobs.discard(job)
        log.write_text(f"# Ray job {job}: {status}\n" + self.client.get_job_logs(job))
        info = self.client.get_job_info(job)
        return (0, None) if status == "SUCCEEDED" else (1, f"Ray job {job} {status}: {info.message}")

    def stop(self) -> None:
        for job in list(self._jobs):
            self.client.stop_job(job)


def run_sweep(sweep: Sweep, launcher, python: str = sys.executable) -> None:
    """Run the sweep's unfinished trials with ``launcher``, ``launcher.parallel`` at a time,
    with a progress bar; statuses are written as trials start and end."""
    from tqdm.auto import tqdm

    todo = [t for t in sweep.trials if not t.finished]
    bar = tqdm(total=len(sweep.trials), initial=len(sweep.trials) - len(todo), desc="sweep", unit="trial")

    def one(trial: Trial) -> None:
        cmd, resume = sweep.command(trial, python)
        attempts = trial.status().get("attempts", 0) + 1
        trial.write_status(state="running", started=time.time(), ended=None, returncode=None, error=None,
                           resumed=resume, attempts=attempts, command=shlex.join(cmd))  # fmt: skip
        try:
            code, message = launcher.run(cmd, trial.dir / "train.log")
        except Exception as e:  # noqa: BLE001 - a launcher fault fails this trial only
            code, message = 1, f"{type(e).__name__}: {e}"
        ok = code == 0 and RunDir(trial.run_dir).finished
        error = None if ok else message or _log_error(trial.dir / "train.log", code)
        trial.write_status(
            state="finished" if ok else "failed", ended=time.time(), returncode=code, error=error
        )
        bar.update()
        bar.set_postfix_str(f"{trial.id} {'ok' if ok else 'failed'}")

    pool = ThreadPoolExecutor(max_workers=max(1, launcher.parallel))
    futures = [pool.submit(one, t) for t in todo]
    try:
        for f in futures:
            f.result()
    except KeyboardInterrupt:
        launcher.stop()  # trials checkpoint and stop; rerunning the sweep resumes them
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()
    bar.close()


def _log_error(log: Path, code: int) -> str:
    """The error a failed trial's log ends with (the CLI's ``error:`` line or the exception)."""
    lines = (
        [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
    )
    hits = [x for x in lines if x.startswith("error:") or re.match(r"^[\w.]+(Error|Exception)\b", x)]
    return (hits or lines or [f"exit code {code}, no output"])[-1]


def _label(params: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


# -- the report ------------------------------------------------------------------------------


def collect(sweep: Sweep) -> list[dict[str, Any]]:
    """One record per trial: id, state, params, steps, wall seconds, error, and the final and
    best (max) value of the sweep's metric and of the reward metrics (train and eval reward,
    their components, eval accuracy)."""
    out = []
    for t in sweep.trials:
        status = t.status()
        rows = t.metrics()
        rec: dict[str, Any] = {"trial": t.id, "state": status["state"], **t.params,
                               "steps": max((r["step"] for r in rows), default=0),
                               "wall_s": (status.get("ended") or math.nan) - (status.get("started") or math.nan)}  # fmt: skip
        keys = sorted({k for r in rows for k, v in r.items()
                       if (_tracked(k) or k == sweep.spec["metric"]) and isinstance(v, (int, float))})  # fmt: skip
        for k in keys:
            series = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
            rec[f"final {k}"], rec[f"best {k}"] = series[-1], max(series)
        rec["error"] = status.get("error") or ""
        out.append(rec)
    return out


def _tracked(key: str) -> bool:
    """The metrics the report gives a final and best value of: rewards and eval accuracy."""
    return is_reward_metric(key) or key == "eval/accuracy"


def write_report(sweep: Sweep, console=None) -> list[dict[str, Any]]:
    """Write ``sweep.csv`` and the two figures, print the summary table; returns the records
    sorted best first by the sweep's metric (its final value; NaN last)."""
    import csv

    from rich.console import Console
    from rich.table import Table

    records = collect(sweep)
    metric = f"final {sweep.spec['metric']}"
    records.sort(key=lambda r: (-r[metric] if isinstance(r.get(metric), float) and r[metric] == r[metric]
                                else math.inf, r["trial"]))  # fmt: skip
    columns = list(dict.fromkeys(k for r in records for k in r if k != "error")) + ["error"]
    with open(sweep.dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(records)
    _plot_curves(sweep, sweep.dir / "sweep_curves.png")
    _plot_params(sweep, records, metric, sweep.dir / "sweep_params.png")
    keys = list(parse_grid(sweep.spec["grid"]))
    shown = ["trial", "state", *keys, "steps", *[c for c in columns if c.startswith("final ") and c.endswith("reward")],
             f"best {sweep.spec['metric']}", "error"]  # fmt: skip
    shown = list(dict.fromkeys(c for c in shown if c in columns))
    table = Table(title=f"sweep {sweep.dir.name}: {len(records)} trials, best first by {metric}")
    for c in shown:
        table.add_column(c, justify="left" if c in ("trial", "state", "error") else "right", overflow="fold")
    for r in records:
        table.add_row(*[_cell(r.get(c, "")) for c in shown])
    (console or Console(width=160)).print(table)
    return records


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return str(v)[:80]


def _plot_curves(sweep: Sweep, png: Path) -> None:
    """Train reward and the sweep's metric against step, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    metrics = {t.id: t.metrics() for t in sweep.trials}
    for ax, key in zip(axes, ("reward", sweep.spec["metric"])):
        for t in sweep.trials:
            rows = [r for r in metrics[t.id] if isinstance(r.get(key), (int, float))]
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o" if len(rows) < 20 else None,
                        label=f"{t.id} {_label(t.params)}")  # fmt: skip
        ax.set(title=key, xlabel="step", ylabel=key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _plot_params(sweep: Sweep, records: list[dict[str, Any]], metric: str, png: Path) -> None:
    """The final metric against each swept parameter (log scale for positive values spanning 10×)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(parse_grid(sweep.spec["grid"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[key], r.get(metric, math.nan)) for r in records]
        try:
            xs = [float(x) for x, _ in pts]
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        except ValueError:  # categorical values
            cats = sorted({x for x, _ in pts})
            xs = [cats.index(x) for x, _ in pts]
            ax.set_xticks(range(len(cats)), cats, rotation=30)
        ax.scatter(xs, [y for _, y in pts])
        ax.set(title=key, xlabel=key, ylabel=metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
