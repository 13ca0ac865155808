"""Many streaming envs stepped in lockstep, hosted in Ray actors so decoding stays off the
learner process.

Each worker (a Ray actor, or a plain object with ``in_process=True``) holds envs and one
:class:`~streamreason.envs.stream.FrameStore`. All copies of a row live on one worker, so the
row's video is decoded once and the copies' observations reference the same frame array,
which Ray's pickling then sends once per call. Each batched call makes one call per worker,
run concurrently.

A worker that dies (its process killed, out of memory, a crash in a decoder) is restarted by
Ray, and the pool rebuilds its envs there: it keeps every env's row and the actions it was
stepped with, replays them on the new process (the env is deterministic, so each env is back
at the same chunk with the same state), and redoes the call that failed. Nothing a rollout
did is lost, and the caller sees no difference beyond :attr:`EnvPool.restarts`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import ray

from streamreason.envs.stream import EnvConfig, FrameStore, StreamingVideoEnv
from streamreason.errors import EnvWorkerError, StreamReasonError
from streamreason.types import StreamRow

logger = logging.getLogger(__name__)

_MAX_DEATHS = 3  # deaths of one worker within one call before the pool gives up on it
_RESTART_WAIT_S = 120.0  # how long a restarting worker may take to answer again


class EnvWorker:
    """Hosts envs in one process; the body of each pool actor. Methods take and return lists
    in ``env_ids`` order."""

    def __init__(self, cfg: EnvConfig):
        self.store = FrameStore(cfg)
        self.envs: dict[int, tuple[StreamingVideoEnv, StreamRow]] = {}

    def make(self, rows: dict[int, StreamRow]) -> None:
        for env_id, row in rows.items():
            self.envs[env_id] = (StreamingVideoEnv(self.store.cfg, self.store), row)

    def reset(self, env_ids: list[int]) -> list[tuple[dict, dict] | StreamReasonError]:
        return [_or_error(env.reset, row) for env, row in map(self._get, env_ids)]

    def step(self, env_ids: list[int], actions: list[str]) -> list[tuple | StreamReasonError]:
        return [_or_error(self._get(i)[0].step, a) for i, a in zip(env_ids, actions, strict=True)]

    def close(self, env_ids: list[int]) -> None:
        for i in env_ids:
            self._get(i)[0].close()
            del self.envs[i]

    def restore(self, log: dict[int, tuple[StreamRow, list[str] | None]]) -> None:
        """Rebuild envs after a restart: ``env_id -> (row, actions)``, actions None for an env
        never reset. Every env is made, reset and stepped with its actions again, all in
        lockstep so that the frame store holds only the chunks the envs are at."""
        self.close([i for i in log if i in self.envs])  # a worker that was only unreachable keeps them
        self.make({i: row for i, (row, _) in log.items()})
        live = {i: actions for i, (_, actions) in log.items() if actions is not None}
        for i in list(live):
            if isinstance(_or_error(self.envs[i][0].reset, self.envs[i][1]), StreamReasonError):
                del live[i]  # its row failed before the restart too; the caller dropped it
        for j in range(max(map(len, live.values()), default=0)):
            for i, actions in list(live.items()):
                if j < len(actions) and isinstance(
                    _or_error(self.envs[i][0].step, actions[j]), StreamReasonError
                ):
                    del live[i]

    def pid(self) -> int:
        """The worker's process id."""
        return os.getpid()

    def _get(self, env_id: int) -> tuple[StreamingVideoEnv, StreamRow]:
        if env_id not in self.envs:
            raise KeyError(f"env {env_id} is not on this worker (closed, or the worker restarted)")
        return self.envs[env_id]


def _or_error(fn, *args):
    try:
        return fn(*args)
    except StreamReasonError as e:
        return e


# Ray restarts a dead worker as often as it dies; each call bounds its own recoveries.
_RemoteEnvWorker = ray.remote(num_cpus=0, max_restarts=-1)(EnvWorker)


@dataclass
class _Env:
    """What the pool knows of one env: its worker, and what a restart replays (its row and
    the actions it was stepped with since its reset; None before the reset)."""

    worker: int
    row: StreamRow
    actions: list[str] | None = None


@dataclass
class EnvPoolConfig:
    """Where envs run: ``num_workers`` Ray actors, or in this process (debugging)."""

    num_workers: int = 2
    in_process: bool = False


class EnvPool:
    """Streaming envs spread over ``num_workers`` workers, stepped in batches.

    Args:
        cfg: the envs' chunking and sampling.
        num_workers: worker processes (Ray actors, ``num_cpus=0`` so they fit beside the
            learner; decoding threads share the node's cores).
        in_process: run the same workers as plain objects in this process (debugging, tests).
            Otherwise Ray is started (``ray.init``) unless it already is.

    Attributes:
        restarts: worker deaths recovered from so far (each a restart and a replay of the
            worker's envs).

    Raises:
        ValueError: ``num_workers < 1``.
    """

    def __init__(self, cfg: EnvConfig, num_workers: int = 2, in_process: bool = False):
        if num_workers < 1:
            raise ValueError(f"EnvPool: num_workers must be >= 1, got {num_workers}")
        self.in_process = in_process
        self.restarts = 0
        if in_process:
            self._workers: list[Any] = [EnvWorker(cfg) for _ in range(num_workers)]
        else:
            if not ray.is_initialized():
                ray.init(include_dashboard=False)
            self._workers = [_RemoteEnvWorker.remote(cfg) for _ in range(num_workers)]
        self._envs: dict[int, _Env] = {}
        self._next_id = 0
        self._next_worker = 0

    def make(self, rows: list[StreamRow], copies: int = 1) -> list[list[int]]:
        """Create ``copies`` envs per row (one GRPO group each); rows go round-robin over the
        workers, all copies of a row to the same one.

        Returns:
            Env ids grouped per row: ``[[id] * copies] * len(rows)``.
        """
        if copies < 1:
            raise ValueError(f"EnvPool.make: copies must be >= 1, got {copies}")
        per_worker: dict[int, dict[int, StreamRow]] = defaultdict(dict)
        groups = []
        for row in rows:
            w, self._next_worker = self._next_worker, (self._next_worker + 1) % len(self._workers)
            ids = list(range(self._next_id, self._next_id + copies))
            self._next_id += copies
            for i in ids:
                per_worker[w][i] = row
                self._envs[i] = _Env(w, row)
            groups.append(ids)
        self._call("make", {w: (batch,) for w, batch in per_worker.items()})
        return groups

    def reset(self, env_ids: list[int]) -> list[tuple[dict, dict] | StreamReasonError]:
        """Reset envs to chunk 0 of their rows.

        Returns:
            Per env, ``(obs, info)`` as :meth:`StreamingVideoEnv.reset` gives, or the
            :class:`~streamreason.errors.VideoError` its video raised (skip and count it).

        Raises:
            EnvWorkerError: a worker kept dying and could not be rebuilt.
        """
        results = self._batched("reset", env_ids)
        for i in env_ids:
            self._envs[i].actions = []
        return results

    def step(self, env_ids: list[int], actions: list[str]) -> list[tuple | StreamReasonError]:
        """Step envs, one action each.

        Returns:
            Per env, ``(obs, reward, terminated, truncated, info)`` as
            :meth:`StreamingVideoEnv.step` gives, or the error its video raised.

        Raises:
            RuntimeError: an env has no running episode.
            EnvWorkerError: a worker kept dying and could not be rebuilt.
        """
        if len(actions) != len(env_ids):
            raise ValueError(f"EnvPool.step: {len(env_ids)} env ids but {len(actions)} actions")
        results = self._batched("step", env_ids, actions)
        for i, action in zip(env_ids, actions):
            self._envs[i].actions.append(action)
        return results

    def close(self, env_ids: list[int]) -> None:
        """Close envs and forget their ids."""
        self._call("close", {w: ([env_ids[p] for p in ps],) for w, ps in self._by_worker(env_ids).items()})
        for i in env_ids:
            del self._envs[i]

    def shutdown(self) -> None:
        """Close every env and stop the workers (Ray itself keeps running)."""
        if self.in_process:
            self.close(list(self._envs))
        else:
            for worker in self._workers:
                ray.kill(worker)
        self._workers, self._envs = [], {}

    def kill_worker(self, w: int) -> None:
        """SIGKILL worker ``w``'s process, as the OOM killer or a crash in a decoder would (fault
        injection, for soak runs and tests); the next call on it recovers (see the module).

        Raises:
            ValueError: an in-process pool (it has no worker processes).
        """
        if self.in_process:
            raise ValueError("EnvPool.kill_worker: an in-process pool has no worker processes")
        os.kill(ray.get(self._workers[w].pid.remote()), signal.SIGKILL)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _by_worker(self, env_ids: list[int]) -> dict[int, list[int]]:
        """Positions in ``env_ids`` grouped by worker."""
        positions: dict[int, list[int]] = defaultdict(list)
        for p, i in enumerate(env_ids):
            if i not in self._envs:
                raise KeyError(f"EnvPool: unknown env id {i} (closed or never made)")
            positions[self._envs[i].worker].append(p)
        return positions

    def _batched(self, method: str, env_ids: list[int], *columns: list) -> list:
        """Call ``method`` once per worker on its envs; results in ``env_ids`` order."""
        positions = self._by_worker(env_ids)
        calls = {w: tuple([col[p] for p in ps] for col in (env_ids, *columns)) for w, ps in positions.items()}
        results: list[Any] = [None] * len(env_ids)
        for w, outs in self._call(method, calls).items():
            for p, out in zip(positions[w], outs, strict=True):
                results[p] = out
        return results

    def _call(self, method: str, calls: dict[int, tuple]) -> dict[int, Any]:
        """``{worker: args}`` -> ``{worker: result}``; remote calls run concurrently."""
        if self.in_process:
            return {w: getattr(self._workers[w], method)(*args) for w, args in calls.items()}
        refs = {w: getattr(self._workers[w], method).remote(*args) for w, args in calls.items()}
        out = {}
        for w, ref in refs.items():
            try:
                out[w] = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                out[w] = self._recover(w, method, calls[w], err)
        return out

    def _recover(self, w: int, method: str, args: tuple, err: Exception) -> Any:
        """Rebuild worker ``w``'s envs on its restarted process and redo ``method(*args)``.

        While Ray restarts the actor, calls fail with ``ActorUnavailableError``: they are
        retried for up to ``_RESTART_WAIT_S``. A worker that dies again while being rebuilt
        counts as another death.

        Raises:
            EnvWorkerError: the worker died ``_MAX_DEATHS`` times during this call, or did not
                come back within ``_RESTART_WAIT_S`` seconds.
        """
        worker = self._workers[w]
        log = {i: (e.row, e.actions) for i, e in self._envs.items() if e.worker == w}
        if method == "make":  # the call that failed was creating these envs
            log = {i: v for i, v in log.items() if i not in args[0]}
        rows = sorted({row.id for row, _ in log.values()})
        deaths, deadline = 1, time.monotonic() + _RESTART_WAIT_S
        self.restarts += 1
        logger.warning("env worker %d died during %s (%s); rebuilding its %d envs (rows %s)",
                       w, method, type(err).__name__, len(log), rows)  # fmt: skip
        while True:
            try:
                ray.get(worker.restore.remote(log))
                return ray.get(getattr(worker, method).remote(*args))
            except ray.exceptions.ActorUnavailableError as again:  # still restarting
                if time.monotonic() > deadline:
                    raise EnvWorkerError(
                        w, f"did not come back within {_RESTART_WAIT_S:.0f} s: {again}"
                    ) from None
                time.sleep(0.2)
            except ray.exceptions.RayActorError as again:
                deaths += 1
                if deaths >= _MAX_DEATHS:
                    raise EnvWorkerError(
                        w, f"died {deaths} times in a row during {method} (rows {rows}): {again}"
                    ) from None
                self.restarts += 1
                logger.warning("env worker %d died again while rebuilding (%s)", w, type(again).__name__)
