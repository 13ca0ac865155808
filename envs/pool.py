"""Many streaming envs stepped in lockstep, hosted in Ray actors so decoding stays off the
learner process.

Each worker (a Ray actor, or a plain object with ``in_process=True``) holds envs and one
:class:`~streamreason.envs.stream.FrameStore`. All copies of a row live on one worker, so the
row's video is decoded once and the copies' observations reference the same frame array,
which Ray's pickling then sends once per call. Each batched call makes one call per worker,
run concurrently.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import ray

from streamreason.envs.stream import EnvConfig, FrameStore, StreamingVideoEnv
from streamreason.errors import StreamReasonError
from streamreason.types import StreamRow

_MAX_RESTARTS = 3  # a crashed worker restarts empty: calls on its old env ids raise KeyError


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

    def _get(self, env_id: int) -> tuple[StreamingVideoEnv, StreamRow]:
        if env_id not in self.envs:
            raise KeyError(f"env {env_id} is not on this worker (closed, or the worker restarted)")
        return self.envs[env_id]


def _or_error(fn, *args):
    try:
        return fn(*args)
    except StreamReasonError as e:
        return e


_RemoteEnvWorker = ray.remote(num_cpus=0, max_restarts=_MAX_RESTARTS)(EnvWorker)


class EnvPool:
    """Streaming envs spread over ``num_workers`` workers, stepped in batches.

    Args:
        cfg: the envs' chunking and sampling.
        num_workers: worker processes (Ray actors, ``num_cpus=0`` so they fit beside the
            learner; decoding threads share the node's cores).
        in_process: run the same workers as plain objects in this process (debugging, tests).
            Otherwise Ray is started (``ray.init``) unless it already is.

    Raises:
        ValueError: ``num_workers < 1``.
    """

    def __init__(self, cfg: EnvConfig, num_workers: int = 2, in_process: bool = False):
        if num_workers < 1:
            raise ValueError(f"EnvPool: num_workers must be >= 1, got {num_workers}")
        self.in_process = in_process
        if in_process:
            self._workers: list[Any] = [EnvWorker(cfg) for _ in range(num_workers)]
        else:
            if not ray.is_initialized():
                ray.init(include_dashboard=False)
            self._workers = [_RemoteEnvWorker.remote(cfg) for _ in range(num_workers)]
        self._worker_of: dict[int, int] = {}
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
                self._worker_of[i] = w
            groups.append(ids)
        self._call("make", {w: (batch,) for w, batch in per_worker.items()})
        return groups

    def reset(self, env_ids: list[int]) -> list[tuple[dict, dict] | StreamReasonError]:
        """Reset envs to chunk 0 of their rows.

        Returns:
            Per env, ``(obs, info)`` as :meth:`StreamingVideoEnv.reset` gives, or the
            :class:`~streamreason.errors.VideoError` its video raised (skip and count it).
        """
        return self._batched("reset", env_ids)

    def step(self, env_ids: list[int], actions: list[str]) -> list[tuple | StreamReasonError]:
        """Step envs, one action each.

        Returns:
            Per env, ``(obs, reward, terminated, truncated, info)`` as
            :meth:`StreamingVideoEnv.step` gives, or the error its video raised.

        Raises:
            RuntimeError: an env has no running episode.
        """
        if len(actions) != len(env_ids):
            raise ValueError(f"EnvPool.step: {len(env_ids)} env ids but {len(actions)} actions")
        return self._batched("step", env_ids, actions)

    def close(self, env_ids: list[int]) -> None:
        """Close envs and forget their ids."""
        self._call("close", {w: ([env_ids[p] for p in ps],) for w, ps in self._by_worker(env_ids).items()})
        for i in env_ids:
            del self._worker_of[i]

    def shutdown(self) -> None:
        """Close every env and stop the workers (Ray itself keeps running)."""
        if self.in_process:
            self.close(list(self._worker_of))
        else:
            for worker in self._workers:
                ray.kill(worker)
        self._workers, self._worker_of = [], {}

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _by_worker(self, env_ids: list[int]) -> dict[int, list[int]]:
        """Positions in ``env_ids`` grouped by worker."""
        positions: dict[int, list[int]] = defaultdict(list)
        for p, i in enumerate(env_ids):
            if i not in self._worker_of:
                raise KeyError(f"EnvPool: unknown env id {i} (closed or never made)")
            positions[self._worker_of[i]].append(p)
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
        refs = [getattr(self._workers[w], method).remote(*args) for w, args in calls.items()]
        return dict(zip(calls, ray.get(refs), strict=True))
