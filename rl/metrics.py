"""Training metrics: one JSON line per ``log`` call, plus TensorBoard and optional W&B.

``run_dir/metrics.jsonl`` is the record the report and tests read; each line is
``{"step": int, "time": unix seconds, "<prefix><name>": float | null, ...}``, with NaN and inf
written as null so every line is valid JSON. Only rank 0 writes.

The verl backend's metrics come from verl's file logger instead (``verl_metrics.jsonl``, one
``{"step": n, "data": {name: value}}`` line per step, verl's names); :func:`read_verl_metrics`
reads them as the same records, with verl's reward metrics also under this project's names
(:func:`verl_record`). :func:`is_reward_metric` is the one rule for which keys are rewards.

Example (resuming from a checkpoint at ``step``)::

    with MetricsLogger(run_dir) as metrics:
        metrics.truncate_after(step)  # drop what the crashed run logged past the checkpoint
        metrics.log(step + 1, {"reward": 0.61, "reward/timing": 0.4})
        metrics.log(step + 1, {"reward": 0.58}, prefix="eval/")
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from streamreason.errors import ConfigError, RowError

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Appends metrics to ``run_dir/metrics.jsonl``, ``run_dir/tensorboard/`` and W&B.

    Args:
        run_dir: the run folder (created if missing).
        tensorboard: also write TensorBoard scalars under ``run_dir/tensorboard/``.
        wandb_project: also log to this W&B project (a new W&B run per logger).
        rank: the process's distributed rank; every call is a no-op unless it is 0.

    Raises:
        ConfigError: ``wandb_project`` is set and ``wandb`` is not installed.
    """

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        rank: int = 0,
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tensorboard_dir = Path(run_dir) / "tensorboard"
        self._rank_zero = rank == 0
        self._tensorboard = self._wandb = None
        if not self._rank_zero:
            return
        if wandb_project is not None:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    f"wandb_project={wandb_project!r} needs wandb: pip install wandb, or unset the project"
                ) from None
            self._wandb = wandb.init(project=wandb_project, dir=str(run_dir), name=Path(run_dir).name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            self._tensorboard = SummaryWriter(self._tensorboard_dir)

    def log(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        """Record ``metrics`` (name → number; 0-d tensors and NumPy scalars work) at ``step``.

        Each name is written as ``prefix + name``. The JSON line is flushed at once; NaN and inf
        become null there, are left out of TensorBoard and passed to W&B as they are.

        Raises:
            ValueError: a prefixed name is ``"step"`` or ``"time"``.
        """
        if not self._rank_zero:
            return
        values = {f"{prefix}{name}": float(value) for name, value in metrics.items()}
        if reserved := values.keys() & {"step", "time"}:
            raise ValueError(f"metric names {sorted(reserved)} are reserved for the line's step and time")
        finite = {name: value for name, value in values.items() if math.isfinite(value)}
        row = {"step": step, "time": time.time(), **{name: finite.get(name) for name in values}}
        with open(self.path, "a") as f:  # closed at once, so a crashed process loses no logged line
            f.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            for name, value in finite.items():
                self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop every record past ``step``, so a run resumed from that step logs no step twice.

        Rewrites ``metrics.jsonl`` atomically without lines whose step is > ``step`` (and without
        a last line torn by a crash), and reopens the TensorBoard writer with
        ``purge_step=step + 1``, which hides the crashed run's later events. W&B is untouched.
        """
        if not self._rank_zero or not self.path.exists():
            return
        rows = [row for row in read_metrics(self.path) if row["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(tmp, self.path)
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = SummaryWriter(self._tensorboard_dir, purge_step=step + 1)

    def close(self) -> None:
        """Flush and close TensorBoard and W&B; later calls are no-ops."""
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._tensorboard = self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in file order (nulls as None).

    A malformed last line (a write torn by a crash) is skipped with a warning.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RowError: a line other than the last is not a JSON object with an integer ``"step"``.
    """
    return _read_lines(
        path, lambda row: isinstance(row.get("step"), int), "a JSON object with an integer 'step'"
    )


def _read_lines(path: str | Path, valid, expected: str) -> list[dict[str, Any]]:
    """The JSON-object lines of ``path`` that ``valid`` accepts; a bad last line (torn by a
    crash) is skipped with a warning, any other raises :class:`RowError` naming ``expected``."""
    lines = Path(path).read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and valid(row)
        except json.JSONDecodeError:
            ok = False
        if ok:
            rows.append(row)
        elif number == len(lines):
            logger.warning("skipping %s:%d: torn last line (a crash mid-write?)", path, number)
        else:
            raise RowError(f"{path}:{number}", f"not {expected}")
    return rows


def is_reward_metric(key: str, prefixes: tuple[str, ...] = ("", "eval/")) -> bool:
    """Whether ``key`` is a reward metric: ``P + "reward"`` or ``P + "reward/<component>"`` for a
    prefix ``P`` in ``prefixes`` (train and eval by default), not a spread statistic (a name
    ending in ``_std`` or ``_stderr``).

    >>> [k for k in ("reward", "reward/timing", "eval/reward", "reward_std", "eval/reward/x_stderr",
    ...              "rewards", "accuracy") if is_reward_metric(k)]
    ['reward', 'reward/timing', 'eval/reward']
    >>> is_reward_metric("eval/reward", prefixes=("",))
    False
    """
    if key.endswith(("_std", "_stderr")):
        return False
    return any(key == p + "reward" or key.startswith(p + "reward/") for p in prefixes)


# verl's names of the reward metrics, as this project's (see verl_record).
VERL_TRAIN_REWARD = "critic/score/mean"
_VERL_EVAL_REWARD = re.compile(r"^val-(?:core|aux)/[^/]+/(reward(?:/[^/]+)?)/mean@(\d+)$")


def verl_record(line: dict[str, Any]) -> dict[str, Any]:
    """One line of verl's file logger (``{"step": n, "data": {...}}``) as a metrics record.

    The record is ``{"step": n, <verl name>: value, ...}`` (numbers and nulls; other values are
    dropped) plus verl's reward metrics under this project's names:

    - ``reward`` ← ``critic/score/mean``: the mean over the step's training rows of each row's
      score. Every row (eviction block) of a trajectory carries its trajectory's reward
      (``verl/trainer/ppo/v1/agent_loop_tq.py`` copies the last output's ``reward_score`` to the
      others), so this is the mean trajectory reward weighted by rows per trajectory; equal to
      the local trainer's ``reward`` when every trajectory has as many blocks. verl logs no train
      reward components (``reward_extra_info`` is read at validation only).
    - ``eval/reward`` ← ``val-core/<data_source>/reward/mean@N`` and ``eval/reward/NAME`` ←
      ``val-aux/<data_source>/reward/NAME/mean@N``: the mean over eval rows of the mean over the
      row's N samples (``trainer.eval_samples``) of our agent loop's ``reward_extra_info``
      (``reward``, ``reward/NAME``; ``verl/trainer/ppo/metric_utils.py``,
      ``process_validation_metrics``). Where rows have different N (failed samples), the largest
      N is taken, as verl's ``val-core`` does. Logged at the steps verl validates
      (``trainer.eval_every`` and the last).
    """
    data = line["data"]
    record: dict[str, Any] = {"step": line["step"]}
    record.update(
        (k, v)
        for k, v in data.items()
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    )
    if isinstance(score := data.get(VERL_TRAIN_REWARD), (int, float)):
        record["reward"] = score
    samples: dict[str, int] = {}
    for key, value in data.items():
        if (m := _VERL_EVAL_REWARD.match(key)) and int(m[2]) >= samples.get(name := f"eval/{m[1]}", 0):
            samples[name], record[name] = int(m[2]), value
    return record


def read_verl_metrics(*paths: str | Path) -> list[dict[str, Any]]:
    """The lines of verl's file logger files (``verl_metrics.jsonl``), in order, as
    :func:`verl_record` records. Missing files are skipped; a malformed last line of a file (a
    write torn by a crash) is skipped with a warning.

    Raises:
        RowError: a line other than a file's last is not ``{"step": int, "data": {...}}``.
    """
    lines = []
    for path in paths:
        if Path(path).is_file():
            lines += _read_lines(
                path,
                lambda line: isinstance(line.get("step"), int) and isinstance(line.get("data"), dict),
                "a verl file-logger line {'step': int, 'data': {...}}",
            )
    return [verl_record(line) for line in lines]
