"""Video files through PyAV: probing, the per-frame pixel budget, and a lazy frame reader.

Times are seconds from the video's first frame; frames are RGB ``uint8`` arrays ``[H, W, 3]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from streamreason.errors import VideoError

_EPS_S = 1e-6  # a frame within this many seconds of a sample time counts as shown at it


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video.

    Attributes:
        duration_s: length in seconds.
        fps: average frame rate, frames per second (0.0 when the container does not say).
        width, height: decoded frame size in pixels.
    """

    duration_s: float
    fps: float
    width: int
    height: int


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's duration, frame rate and size, and check that a frame decodes.

    The duration comes from the stream's metadata, else the container's, else from decoding
    to the last frame.

    Raises:
        VideoError: the file is missing, is not a video, has no video stream, or no frame
            decodes.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        frames = _decode(path, container, stream)
        first = next(frames, None)
        if first is None:
            raise VideoError(path, "no decodable video frames")
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            last = first
            for frame in frames:
                last = frame
            duration = last.time - first.time + (1 / fps if fps else 0.0)
        return VideoInfo(duration, fps, first.width, first.height)


def frame_size_for_budget(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28
) -> tuple[int, int]:
    """The ``(height, width)`` a frame is resized to: Qwen2-VL's ``smart_resize`` rule.

    Each side becomes a multiple of ``factor`` pixels, the aspect ratio is kept as closely as
    possible, and ``height * width`` lies in ``[min_pixels, max_pixels]``.

    Raises:
        ValueError: the aspect ratio exceeds 200.
    """
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


class FrameReader:
    """The frames a live viewer sees at given times, decoded lazily from one video file.

    For each time ``t`` (seconds from the first frame) :meth:`read` returns the last frame
    whose presentation time is ``<= t`` (the first frame if ``t`` precedes it), converted to
    RGB at ``size`` by FFmpeg's swscale (bicubic, as Qwen2-VL's processor resamples). Times
    that increase across calls decode forward: every frame is decoded at most once and at
    most two decoded frames are held, so long videos stream in bounded memory. A time earlier
    than the previous one seeks back to the keyframe before it.

    Args:
        path: the video file.
        size: output ``(height, width)`` in pixels.

    Raises:
        VideoError: on open, or on :meth:`read` when decoding fails.
    """

    def __init__(self, path: str | Path, size: tuple[int, int]):
        self.path = str(path)
        self.size = size
        self._container = _open(path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._origin_s: float | None = None
        try:
            self._restart(None)
        except VideoError:
            self._container.close()
            raise

    def read(self, times_s: Sequence[float]) -> np.ndarray:
        """Frames shown at ``times_s`` (seconds): ``uint8 [len(times_s), H, W, 3]``."""
        h, w = self.size
        out = np.empty((len(times_s), h, w, 3), dtype=np.uint8)
        for i, t in enumerate(times_s):
            if t < self._last_t:
                self._restart(t)
            self._last_t = t
            while self._next is not None and self._next.time - self._origin_s <= t + _EPS_S:
                self._cur, self._next, self._cur_rgb = self._next, next(self._frames, None), None
            if self._cur_rgb is None:
                self._cur_rgb = self._cur.to_ndarray(
                    format="rgb24", width=w, height=h, interpolation="BICUBIC"
                )
            out[i] = self._cur_rgb
        return out

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _restart(self, t: float | None) -> None:
        """Decode from the start (``t=None``) or from the keyframe at or before ``t`` seconds."""
        if t is not None:
            self._container.seek(int((t + self._origin_s) / self._stream.time_base), stream=self._stream)
        self._frames = _decode(self.path, self._container, self._stream)
        self._cur = next(self._frames, None)
        if self._cur is None:
            raise VideoError(self.path, "no decodable video frames")
        if self._origin_s is None:
            self._origin_s = self._cur.time
        self._next = next(self._frames, None)
        self._cur_rgb: np.ndarray | None = None
        self._last_t = float("-inf")


def _open(path: str | Path) -> av.container.InputContainer:
    if not Path(path).is_file():
        raise VideoError(path, "file not found")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise VideoError(path, f"not a readable video ({e.strerror})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    return container


def _decode(path: str | Path, container: av.container.InputContainer, stream) -> Iterator[av.VideoFrame]:
    """The stream's frames in presentation order; decoding errors become VideoError."""
    try:
        for frame in container.decode(stream):
            if frame.time is None:
                raise VideoError(path, "frames carry no timestamps (a raw stream? remux it into MP4)")
            yield frame
    except av.FFmpegError as e:
        raise VideoError(path, f"decoding failed ({e.strerror})") from None
