"""The run directory (``trainer.run_dir``): one layout and one status file, both backends.

Layout::

    config.yaml          the resolved recipe (streamreason.schema.to_yaml); verl's agent-loop
                         workers read their rollout and reward settings from it
    status.json          state, backend, step, steps, final, error, started, updated (below)
    metrics.jsonl        local: one line per step (streamreason.rl.metrics.MetricsLogger)
    verl_metrics.jsonl   verl: verl's file logger, {"step": n, "data": {...}} per step
    verl_metrics.before_resume.jsonl   verl: the lines of earlier attempts, up to the
                         checkpoint a resume started from (verl's logger empties its file)
    checkpoints/         local: step_00000040/ (streamreason.rl.checkpoint)
                         verl: global_step_40/actor/ (FSDP shards, huggingface/ config and
                         tokenizer), latest_checkpointed_iteration.txt
    final/               local: the final policy as a Hugging Face folder (LoRA merged)
    tensorboard/         both
    train.parquet, val.parquet, agent_loop.yaml, verl_config.yaml   verl: what it is launched with

``status.json`` is rewritten atomically (a temp file renamed over it) at each change::

    {"state": "running" | "finished" | "failed" | "stopped", "backend": "local" | "verl",
     "step": 40, "steps": 100, "final": "final", "error": null,
     "started": 1767000000.0, "updated": 1767000123.4}

``final`` is the final model's path relative to the run directory: ``final`` for the local
trainer; for verl, the last checkpoint's ``checkpoints/global_step_N/actor/huggingface`` where it
holds the weights (``verl.actor_rollout_ref.actor.checkpoint.save_contents`` with ``hf_model``),
else ``checkpoints/global_step_N/actor`` (FSDP shards; ``python -m verl.model_merger merge
--backend fsdp --local_dir <it> --target_dir <out>`` writes a Hugging Face folder). ``stopped`` is
a run that checkpointed and exited on SIGTERM or Ctrl-C (``--resume`` continues it); ``running``
left behind is a run that was killed.

Readers: :attr:`RunDir.finished` (sweeps skip finished trials), :meth:`RunDir.latest_checkpoint`
(what ``--resume`` continues from), :meth:`RunDir.read_metrics` (``{"step": n, key: value}``
records from either backend, verl's reward metrics under this project's names:
:func:`streamreason.rl.metrics.verl_record`).

Example (a trainer, rank 0)::

    run = RunDir(cfg.trainer.run_dir)
    run.start(cfg, backend="local", steps=cfg.trainer.steps, resume=resume)
    for step in ...:
        run.update(step + 1)
    run.finish()  # or run.stop() on SIGTERM, run.fail(str(e)) on an error
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from streamreason.errors import ConfigError

STATES = ("running", "finished", "failed", "stopped")
_VERL_TRACKER = "latest_checkpointed_iteration.txt"  # verl's checkpoint_manager


class RunDir:
    """A run directory (module docstring). Only one process of a run (rank 0) writes it.

    Args:
        path: the folder (need not exist yet).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.verl_metrics = self.path / "verl_metrics.jsonl"
        self.verl_metrics_before_resume = self.path / "verl_metrics.before_resume.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"
        self.status_file = self.path / "status.json"
        self._status: dict[str, Any] | None = None  # what this process last wrote

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The run's status (module docstring); ``{}`` when it has none.

        Raises:
            ConfigError: ``status.json`` is not a JSON object (edited by hand?).
        """
        if not self.status_file.is_file():
            return {}
        try:
            status = json.loads(self.status_file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.status_file}: not valid JSON ({e}); delete it or fix it") from None
        if not isinstance(status, dict):
            raise ConfigError(f"{self.status_file}: not a JSON object; delete it or fix it")
        return status

    def holds_run(self) -> bool:
        """Whether a run was started here: metrics, a status or checkpoints exist (a ``--dry-run``
        writes none of them)."""
        return any(p.exists() for p in (self.metrics, self.verl_metrics, self.status_file, self.checkpoints))

    def write_config(self, cfg) -> None:
        """Write ``cfg`` (a :class:`~streamreason.config.StreamReasonConfig`) as ``config.yaml``,
        atomically; the one writer of that file."""
        from streamreason.schema import to_yaml

        self._replace(self.config, to_yaml(cfg))

    def start(self, cfg, backend: str, steps: int, resume: bool = False) -> None:
        """Record a start: ``config.yaml`` (unless resuming a run that has one), then status
        ``running`` at the step the run had reached (0 for a new run).

        Args:
            cfg: the resolved recipe.
            backend: ``"local"`` or ``"verl"``.
            steps: the run's total steps (``trainer.steps``).
            resume: continuing a run in this folder: its ``config.yaml`` stays as it is.
        """
        if not resume or not self.config.exists():
            self.write_config(cfg)
        now = time.time()
        step = self.status().get("step", 0) if resume else 0
        self._write(state="running", backend=backend, step=step, steps=steps, final=None, error=None,
                    started=now, updated=now)  # fmt: skip

    def update(self, step: int) -> None:
        """Record the step the run has completed (cheap enough for every step: no fsync)."""
        self._write(durable=False, step=step, updated=time.time())

    def finish(self, final: Path | None = None) -> None:
        """Record the end of a completed run; ``final``: the final model (default ``final/``)."""
        final = Path(final) if final is not None else self.final
        rel = os.path.relpath(final.resolve(), self.path.resolve())
        self._write(state="finished", final=rel, error=None, updated=time.time())

    def stop(self) -> None:
        """Record a stop that checkpointed first (SIGTERM, Ctrl-C): ``--resume`` continues it."""
        self._write(state="stopped", updated=time.time())

    def fail(self, error: str) -> None:
        """Record a run that ended with ``error``."""
        self._write(state="failed", error=error, updated=time.time())

    @property
    def finished(self) -> bool:
        """The run completed: status ``finished`` and its final model exists. A folder without
        ``status.json`` (written before it existed) is finished when it holds ``final/``."""
        status = self.status()
        if not status:
            return self.final.is_dir()
        return status.get("state") == "finished" and (self.path / (status.get("final") or "final")).exists()

    # -- checkpoints and metrics -----------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"local"`` or ``"verl"``: the status's, else told by the checkpoints' layout."""
        if backend := self.status().get("backend"):
            return backend
        verl = (self.checkpoints / _VERL_TRACKER).exists() or self.verl_metrics.exists()
        return "verl" if verl else "local"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``--resume`` continues from, or None.

        Local: the newest complete one (:func:`streamreason.rl.checkpoint.latest_checkpoint`, which
        verifies every file). verl: the ``global_step_N`` folder its tracker file
        (``checkpoints/latest_checkpointed_iteration.txt``, written after a save completes) names,
        as verl's own resume finds it (``find_latest_ckpt_path``); a ``global_step_*`` folder
        without the tracker is an interrupted save.
        """
        if self.backend == "verl":
            tracker = self.checkpoints / _VERL_TRACKER
            if not tracker.is_file():
                return None
            try:
                folder = self.checkpoints / f"global_step_{int(tracker.read_text().strip())}"
            except ValueError:  # not a step number: verl could not resume from it either
                return None
            return folder if folder.is_dir() else None
        from streamreason.rl.checkpoint import latest_checkpoint

        return latest_checkpoint(self.path)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The run's metrics as ``{"step": n, key: value}`` records in step order, whichever
        backend wrote them (verl's: :func:`~streamreason.rl.metrics.verl_record`).

        Raises:
            FileNotFoundError: the run has no metrics file.
            RowError: a line is malformed (:func:`~streamreason.rl.metrics.read_metrics`).
        """
        from streamreason.rl.metrics import read_metrics, read_verl_metrics

        if self.backend == "verl" and (
            self.verl_metrics.exists() or self.verl_metrics_before_resume.exists()
        ):
            return read_verl_metrics(self.verl_metrics_before_resume, self.verl_metrics)
        if not self.metrics.exists():
            raise FileNotFoundError(f"{self.metrics}: no metrics in {self.path} (not a run directory?)")
        return read_metrics(self.metrics)

    def keep_verl_metrics(self, step: int) -> None:
        """Before verl resumes from the checkpoint of ``step``: keep the lines of earlier attempts
        up to ``step`` in ``verl_metrics.before_resume.jsonl`` (verl's file logger empties
        ``verl_metrics.jsonl`` when it starts), so no step is lost or logged twice."""
        lines = []
        for path in (self.verl_metrics_before_resume, self.verl_metrics):
            if path.is_file():
                for text in path.read_text().splitlines():
                    try:
                        line = json.loads(text)
                    except json.JSONDecodeError:  # a line torn by a crash
                        continue
                    if isinstance(line, dict) and isinstance(line.get("step"), int) and line["step"] <= step:
                        lines.append(text + "\n")
        if lines:
            self._replace(self.verl_metrics_before_resume, "".join(lines))
        else:
            self.verl_metrics_before_resume.unlink(missing_ok=True)
        self.verl_metrics.unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------------------
    def _write(self, durable: bool = True, **fields) -> None:
        if self._status is None:
            self._status = self.status()
        self._status.update(fields)
        self._replace(self.status_file, json.dumps(self._status, indent=1) + "\n", durable=durable)

    def _replace(self, path: Path, text: str, durable: bool = True) -> None:
        """Write ``path`` atomically: a reader sees the old or the new content, never a part."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
