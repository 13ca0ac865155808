"""The streaming video environment: a video cut into chunks, queries injected when asked.

Chunk ``k`` covers ``[k * cs, (k + 1) * cs)`` seconds, ``cs`` being the chunk length. One step
per chunk: the env shows the chunk's frames and the queries asked inside its window, the
policy answers with one action (its text for that turn), and the env moves to the next chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamreason.envs.video import FrameReader, VideoInfo, frame_size_for_budget, probe_video
from streamreason.errors import VideoError
from streamreason.types import Query, StreamRow, chunk_index

_FRAME_SLACK = 1e-9  # fps * chunk_seconds is a float product: 20 fps x 0.1 s holds 2 frames, not 1.999...
_DURATION_SLACK_S = 1e-6  # container durations are whole microseconds
CHUNKINGS = ("ceil", "thinkstream")
"""The values of :attr:`EnvConfig.chunking`."""


@dataclass
class EnvConfig:
    """How videos are cut and sampled.

    Attributes:
        chunk_seconds: chunk length, seconds.
        frames_per_chunk: frames shown per chunk.
        fps: frame sampling rate inside a chunk, frames per second: chunk ``k`` shows frames at
            ``k * cs + i / fps``. None spreads the frames evenly over the chunk's window
            (``frames_per_chunk / cs``, following ``cs`` when ``adaptive_chunks`` stretches it).
        min_pixels, max_pixels: per-frame pixel budget; frames are resized with
            :func:`~streamreason.envs.video.frame_size_for_budget`.
        resize_factor: frame sides become multiples of this many pixels (patch x merge).
        max_chunks: at most this many chunks per video (None: no cap). Videos cut short end
            with ``truncated=True``.
        adaptive_chunks: ThinkStream's rule: ``cs = max(chunk_seconds, ceil(duration /
            max_chunks))`` so that long videos still fit ``max_chunks``.
        chunking: how a video of ``duration`` seconds is cut into chunks of ``cs``:
            ``"ceil"`` (default): ``ceil(duration / cs)`` chunks of ``cs`` each, the last one
            reaching past the end (every chunk has the same length and frame spacing, and a
            video cut at ``end_s`` keeps its partial last chunk, as OVO-Bench cuts its clips);
            ``"thinkstream"``: ThinkStream's ``preload_video``
            (``thinkstream/data/stream_data_processor.py``): ``floor(duration / cs)`` chunks
            (at least 1), the remainder added to the last one, and for a low-fps video with
            fewer than ``n · frames_per_chunk`` frames ``n = max(1, frames // frames_per_chunk)``
            and ``cs = duration / n`` (frames up to ``min(floor(duration · fps), total − 1)``,
            total = ``round(video duration · fps)``; no clamp when the fps is unknown).

    Raises:
        ValueError: naming the field whose value is out of range.
    """

    chunk_seconds: float = 1.0
    frames_per_chunk: int = 2
    fps: float | None = None
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 192 * 28 * 28
    resize_factor: int = 28
    max_chunks: int | None = 120
    adaptive_chunks: bool = False
    chunking: str = "ceil"

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"EnvConfig.{name} {rule}, got {getattr(self, name)!r}")

        check(math.isfinite(self.chunk_seconds) and self.chunk_seconds > 0, "chunk_seconds", "must be > 0")
        check(self.frames_per_chunk >= 1, "frames_per_chunk", "must be >= 1")
        check(
            self.fps is None or self.fps * self.chunk_seconds >= self.frames_per_chunk - _FRAME_SLACK,
            "fps",
            "must be >= frames_per_chunk / chunk_seconds, else a chunk's frames fall outside its window",
        )
        check(self.min_pixels >= 1, "min_pixels", "must be >= 1")
        check(self.max_pixels >= self.min_pixels, "max_pixels", "must be >= min_pixels")
        check(self.resize_factor >= 1, "resize_factor", "must be >= 1")
        check(self.max_chunks is None or self.max_chunks >= 1, "max_chunks", "must be >= 1 or None")
        check(not self.adaptive_chunks or self.max_chunks is not None, "adaptive_chunks", "needs max_chunks")
        check(self.chunking in CHUNKINGS, "chunking", f"must be one of {list(CHUNKINGS)}")


@dataclass(frozen=True)
class ChunkPlan:
    """How one video is cut into chunks under an :class:`EnvConfig`.

    Attributes:
        video: the probed video.
        chunk_seconds: chunk length ``cs``, seconds (stretched by ``adaptive_chunks``).
        n_chunks: number of chunks (:attr:`EnvConfig.chunking`), capped by ``max_chunks``.
        last_end_s: end of the last chunk's window when it holds the remainder
            (``chunking="thinkstream"``), seconds; None when every window is ``cs`` long.
        truncated: ``max_chunks`` cut the video short.
        frame_size: ``(height, width)`` of the frames, pixels.
        frame_step_s: seconds between the frames of a chunk.
        frames_per_chunk: frames per chunk.
    """

    video: VideoInfo
    chunk_seconds: float
    n_chunks: int
    truncated: bool
    frame_size: tuple[int, int]
    frame_step_s: float
    frames_per_chunk: int
    last_end_s: float | None = None

    @classmethod
    def for_video(cls, cfg: EnvConfig, video: VideoInfo, end_s: float | None = None) -> ChunkPlan:
        """The plan of ``video``, streamed up to ``end_s`` seconds (None: to its end).

        With ``chunking="ceil"`` the stream covers ``ceil(min(duration, end_s) / cs)`` chunks,
        so a cut inside a chunk keeps that whole chunk (OVO-Bench cuts its clips at
        ``ceil(realtime)``); with ``"thinkstream"``, ``floor(...)`` chunks, the last one to the end.
        """
        cs = cfg.chunk_seconds
        length = video.duration_s if end_s is None else min(video.duration_s, end_s)
        last_end = None
        if cfg.chunking == "thinkstream":  # preload_video, thinkstream/data/stream_data_processor.py
            if cfg.adaptive_chunks:
                cs = max(cs, float(math.ceil(length / cfg.max_chunks)))
            n = max(1, int(length // cs))
            # the low-fps clamp: available_frames from frame 0 to min(floor(end * fps), total - 1)
            total = round(video.duration_s * video.fps)
            available = max(min(math.floor(length * video.fps), total - 1) + 1, cfg.frames_per_chunk)
            if video.fps > 0 and n * cfg.frames_per_chunk > available:
                n = max(1, available // cfg.frames_per_chunk)
                cs = length / n
            last_end = length
        else:
            if cfg.adaptive_chunks:
                cs = float(max(cs, math.ceil((length - _DURATION_SLACK_S) / cfg.max_chunks)))
            n = max(1, math.ceil((length - _DURATION_SLACK_S) / cs))
        cap = n if cfg.max_chunks is None else min(n, cfg.max_chunks)
        size = frame_size_for_budget(
            video.height, video.width, cfg.min_pixels, cfg.max_pixels, cfg.resize_factor
        )
        step = 1 / cfg.fps if cfg.fps else cs / cfg.frames_per_chunk
        return cls(video, cs, cap, cap < n, size, step, cfg.frames_per_chunk, last_end if cap == n else None)

    def window(self, k: int) -> tuple[float, float]:
        """Chunk ``k``'s window ``[start, end)``, seconds (the last one to :attr:`last_end_s` when set)."""
        if self.last_end_s is not None and k == self.n_chunks - 1:
            return k * self.chunk_seconds, self.last_end_s
        return k * self.chunk_seconds, (k + 1) * self.chunk_seconds

    def frame_times(self, k: int) -> np.ndarray:
        """Sample times of chunk ``k``'s frames: ``float64 [frames_per_chunk]``, seconds."""
        return k * self.chunk_seconds + self.frame_step_s * np.arange(self.frames_per_chunk, dtype=np.float64)

    def chunk_of(self, time_s: float) -> int:
        """The chunk whose window holds ``time_s`` (:func:`~streamreason.types.chunk_index`);
        times past the last chunk map to it."""
        return chunk_index(time_s, self.chunk_seconds, self.n_chunks)


@dataclass
class _Video:
    plan: ChunkPlan
    reader: FrameReader
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # chunk -> frames
    positions: dict[Any, int] = field(default_factory=dict)  # viewer -> chunk it is on


class FrameStore:
    """Decoded chunk frames, shared by the envs of one process that watch the same video.

    Copies of a row (the trajectories of a GRPO group) step in lockstep: each chunk is decoded
    once and every copy's observation holds the same read-only array. A chunk is dropped once
    every viewer of its video has moved past it (so lockstep copies hold at most two chunks),
    and the video's decoder is closed when its last viewer leaves.
    """

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self._videos: dict[str, _Video] = {}

    def join(self, path: str, viewer: Any, end_s: float | None = None) -> ChunkPlan:
        """Register ``viewer`` (any hashable, e.g. an env) at chunk 0 of ``path`` streamed up to
        ``end_s`` seconds (None: the whole video). Streams of one video with different ends are
        separate entries.

        Raises:
            VideoError: the video cannot be probed or opened, or its aspect ratio is too
                extreme for the pixel budget.
        """
        key = (path, end_s)
        if key not in self._videos:
            try:
                plan = ChunkPlan.for_video(self.cfg, probe_video(path), end_s)
            except ValueError as e:  # no frame size fits the pixel budget
                raise VideoError(path, str(e)) from None
            self._videos[key] = _Video(plan, FrameReader(path, plan.frame_size))
        video = self._videos[key]
        video.positions[viewer] = 0
        return video.plan

    def chunk(self, path: str, viewer: Any, k: int, end_s: float | None = None) -> np.ndarray:
        """Frames of chunk ``k`` for ``viewer`` (joined with the same ``end_s``): read-only
        ``uint8 [F, H, W, 3]``.

        Raises:
            VideoError: decoding failed.
        """
        video = self._videos[(path, end_s)]
        video.positions[viewer] = k
        frames = video.frames.get(k)
        if frames is None:
            frames = video.reader.read(video.plan.frame_times(k))
            frames.flags.writeable = False
            video.frames[k] = frames
        self._evict(video)
        return frames

    def leave(self, path: str, viewer: Any, end_s: float | None = None) -> None:
        """Unregister ``viewer``; the last viewer to leave closes the video."""
        video = self._videos[(path, end_s)]
        del video.positions[viewer]
        if video.positions:
            self._evict(video)
        else:
            video.reader.close()
            del self._videos[(path, end_s)]

    def cached_chunks(self, path: str, end_s: float | None = None) -> list[int]:
        """Chunks of ``path`` held in memory (empty when no viewer watches it)."""
        video = self._videos.get((path, end_s))
        return sorted(video.frames) if video else []

    @staticmethod
    def _evict(video: _Video) -> None:
        low = min(video.positions.values())
        for k in [k for k in video.frames if k < low]:
            del video.frames[k]


class StreamingVideoEnv:
    """One streaming episode over one video, with the Gymnasium ``reset``/``step`` contract.

    Observations are dicts:

    - ``chunk_index`` (int): the chunk shown; ``n_chunks`` for the end marker.
    - ``window_s`` (tuple[float, float]): the chunk's ``[start, end)``, seconds.
    - ``frames`` (``np.ndarray`` uint8 ``[F, H, W, 3]``, read-only): RGB frames at
      ``frame_times_s``, each the last video frame shown at or before that time. Shared by
      reference with other envs watching the same video through the same store: copy before
      writing. The end marker has ``F = 0``.
    - ``frame_times_s`` (``np.ndarray`` float64 ``[F]``): sample times, seconds.
    - ``queries`` (list[Query]): queries asked inside the window (at chunk
      ``floor(time_s / cs)``; those past the last chunk come with the last chunk). They carry
      the ground truth: show the model ``Query.text`` only.

    Args:
        cfg: chunking and sampling.
        store: frame store shared with other envs of this process (see :class:`FrameStore`);
            None gives the env a private one.

    Raises:
        ValueError: ``store`` was built for another config.
    """

    def __init__(self, cfg: EnvConfig, store: FrameStore | None = None):
        if store is not None and store.cfg != cfg:
            raise ValueError("StreamingVideoEnv: store was built for another EnvConfig")
        self.cfg = cfg
        self.store = store if store is not None else FrameStore(cfg)
        self._row: StreamRow | None = None
        self._plan: ChunkPlan | None = None
        self._k = 0
        self._actions: list[str] = []
        self._queries: dict[int, list[Query]] = {}

    def reset(self, row: StreamRow, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode on ``row`` (streamed up to ``row.end_s`` when set); return chunk 0 and
        ``info = {row_id, n_chunks, chunk_seconds, video: VideoInfo, frame_size: (h, w)}``.

        ``seed`` is accepted for the Gymnasium contract; the env is deterministic.

        Raises:
            VideoError: the row's video is missing, unreadable or has no frames.
        """
        self.close()
        plan = self.store.join(row.video_path, self, row.end_s)
        self._row, self._plan, self._k, self._actions = row, plan, 0, []
        self._queries = {}
        for q in sorted(row.queries, key=lambda q: q.time_s):
            self._queries.setdefault(plan.chunk_of(q.time_s), []).append(q)
        info = {
            "row_id": row.id,
            "n_chunks": plan.n_chunks,
            "chunk_seconds": plan.chunk_seconds,
            "video": plan.video,
            "frame_size": plan.frame_size,
        }
        return self._observe(0), info

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Record ``action`` (the policy's text for the current chunk) and show the next chunk.

        Returns:
            ``(obs, reward, terminated, truncated, info)``. ``reward`` is always 0.0: rewards
            score whole trajectories, outside the env. After the last chunk's action ``obs`` is
            the end marker and ``terminated`` is True (``truncated`` instead when
            ``max_chunks`` cut the video). ``info = {chunk_index, actions}``: the shown chunk
            and the actions so far, one per chunk.

        Raises:
            RuntimeError: no episode is running (``reset`` not called, failed, or the episode ended).
            VideoError: decoding the next chunk failed.
        """
        plan = self._plan
        if plan is None:
            raise RuntimeError("StreamingVideoEnv.step: no running episode; call reset() first")
        self._actions.append(action)
        self._k += 1
        done = self._k == plan.n_chunks
        if done:
            self.close()
            end = plan.window(self._k - 1)[1]
            frames = np.zeros((0, *plan.frame_size, 3), dtype=np.uint8)
            frames.flags.writeable = False
            obs = {
                "chunk_index": self._k,
                "window_s": (end, end),
                "frames": frames,
                "frame_times_s": np.zeros(0),
                "queries": [],
            }
        else:
            obs = self._observe(self._k)
        info = {"chunk_index": self._k, "actions": list(self._actions)}
        return obs, 0.0, done and not plan.truncated, done and plan.truncated, info

    def close(self) -> None:
        """End the episode, if one is running, and leave the frame store."""
        if self._row is not None:
            self.store.leave(self._row.video_path, self, self._row.end_s)
        self._row = self._plan = None

    def _observe(self, k: int) -> dict[str, Any]:
        try:
            frames = self.store.chunk(self._row.video_path, self, k, self._row.end_s)
        except VideoError:
            self.close()  # a video that stops decoding ends the episode
            raise
        return {
            "chunk_index": k,
            "window_s": self._plan.window(k),
            "frames": frames,
            "frame_times_s": self._plan.frame_times(k),
            "queries": list(self._queries.get(k, ())),
        }
