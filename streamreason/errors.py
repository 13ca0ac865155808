"""The project's documented errors.

Every error a user can cause (a bad file, a malformed row, an unknown config key, a crashing
reward function) is a :class:`StreamReasonError` whose message names the file, row or key and
says what to do. Long runs catch these per sample, count them, and go on.
"""

from __future__ import annotations


class StreamReasonError(Exception):
    """Base class of every error the project raises on bad input."""


class VideoError(StreamReasonError):
    """A video file is missing, unreadable or has no decodable frames.

    Attributes:
        path: the video file as given.
        reason: what went wrong, in a few words.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"video {self.path!r}: {reason} (check the file, or drop the row that names it)")

    def __reduce__(self):  # keep path and reason across Ray and pickle
        return (type(self), (self.path, self.reason))


class RowError(StreamReasonError):
    """A dataset row is malformed.

    Attributes:
        where: ``file:line`` (1-based line) or another locator of the row.
        reason: what is wrong with it.
    """

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"row {where}: {reason}")

    def __reduce__(self):
        return (type(self), (self.where, self.reason))


class EnvWorkerError(StreamReasonError):
    """An env worker process (a Ray actor of the env pool) kept dying and could not be rebuilt.

    Attributes:
        worker: the worker's index in its pool.
        reason: how often and where it died, and the rows it held.
    """

    def __init__(self, worker: int, reason: str):
        self.worker = worker
        self.reason = reason
        super().__init__(
            f"env worker {worker}: {reason}; check its rows' videos and the node's memory, then resume"
        )

    def __reduce__(self):
        return (type(self), (self.worker, self.reason))


class ConfigError(StreamReasonError):
    """A configuration key or value is invalid (unknown key, wrong type, bad value)."""


class RewardError(StreamReasonError):
    """A reward function failed on one trajectory.

    Attributes:
        reward: the reward's registry name or ``file.py:fn`` spec.
        row_id: the row whose trajectory it was scoring.
    """

    def __init__(self, reward: str, row_id: str, reason: str):
        self.reward = reward
        self.row_id = row_id
        self.reason = reason
        super().__init__(f"reward {reward!r} failed on row {row_id!r}: {reason}")

    def __reduce__(self):
        return (type(self), (self.reward, self.row_id, self.reason))


class CheckpointError(StreamReasonError):
    """A checkpoint folder is incomplete or corrupt (a crash mid-save, a truncated or changed file).

    Attributes:
        path: the checkpoint folder.
        reason: what is wrong with it.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"checkpoint {self.path!r}: {reason}; delete the folder or resume from an earlier one"
        )

    def __reduce__(self):
        return (type(self), (self.path, self.reason))
