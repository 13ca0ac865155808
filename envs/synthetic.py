"""A synthetic streaming task: coloured shapes appearing, moving and disappearing on a dark
screen, with timestamped queries whose answers and answer times are exact by construction.

Every event happens at a whole second, so the frame at time ``t`` shows the scene at ``t``. At
most three shapes are visible at once and visible shapes never overlap. Three task families:

- ``event_timing``: "Tell me when a red square appears." asked at 0 s; answer ``yes`` at the
  target's (single) appearance, at 2 s or later.
- ``state_mc``: "What colour is the circle now? A. red ..." (or which shape the <colour> object
  is) asked at ``t_q``; the one matching shape on screen at ``t_q`` decides the letter.
- ``counting`` (OVO-Bench REC style): "How many red squares have appeared so far?" asked at 2-3
  increasing times, each answered with the count of appearances up to then.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image, ImageDraw
from tqdm import tqdm

from streamreason.types import Query, StreamRow, Thought

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (16, 16, 24)
TASKS = ("event_timing", "state_mc", "counting")
MAX_VISIBLE = 3
_LETTERS = "ABCD"
# With x264's cpu-independent mode, one thread, and bit-exact RGB->YUV (swscale's SIMD paths
# otherwise round by buffer alignment), the MP4 bytes are a function of the scene.
_BITEXACT = Interpolation.BILINEAR | Interpolation.BITEXACT | Interpolation.ACCURATE_RND


@dataclass(frozen=True)
class SynthObject:
    """One shape's track: visible for ``appear_s <= t < disappear_s`` (whole seconds), its
    centre moving linearly from ``(x_start, y_start)`` to ``(x_end, y_end)`` pixels."""

    colour: str
    shape: str
    appear_s: int
    disappear_s: int
    size_px: int
    x_start: int
    y_start: int
    x_end: int
    y_end: int

    def visible(self, t: float) -> bool:
        return self.appear_s <= t < self.disappear_s

    def box(self, t: float) -> tuple[int, int, int, int]:
        """Bounding box ``(x0, y0, x1, y1)`` at ``t`` seconds, pixels, ends exclusive."""
        frac = (t - self.appear_s) / (self.disappear_s - self.appear_s)
        x0 = round(self.x_start + (self.x_end - self.x_start) * frac) - self.size_px // 2
        y0 = round(self.y_start + (self.y_end - self.y_start) * frac) - self.size_px // 2
        return x0, y0, x0 + self.size_px, y0 + self.size_px


def render(objects: list[SynthObject], t: float, size: int) -> np.ndarray:
    """The scene at ``t`` seconds: RGB ``uint8 [size, size, 3]``."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        if not o.visible(t):
            continue
        x0, y0, x1, y1 = o.box(t)
        x1, y1 = x1 - 1, y1 - 1  # PIL boxes include their far edge
        if o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=COLOURS[o.colour])
        elif o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=COLOURS[o.colour])
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=COLOURS[o.colour])
    return np.asarray(img)


def write_video(
    dst: str | Path | IO[bytes],
    objects: list[SynthObject],
    seconds: int,
    *,
    size: int = 112,
    fps: int = 10,
    format: str | None = None,
) -> None:
    """Encode ``seconds * fps`` frames of the scene with H.264 (libx264, yuv420p).

    Args:
        dst: output path or writable binary file; ``format`` names the container when the
            path's suffix does not (e.g. ``"matroska"`` for a file object).
    """
    with av.open(dst, "w", format=format) as out:
        stream = out.add_stream("libx264", rate=fps, options={"x264-params": "cpu-independent=1"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(render(objects, i / fps, size), format="rgb24")
            frame = frame.reformat(format="yuv420p", interpolation=_BITEXACT)
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def synthesize(
    out_dir: str | Path,
    n: int,
    seed: int,
    *,
    size: int = 112,
    video_fps: int = 10,
    min_seconds: int = 8,
    max_seconds: int = 16,
    tasks: tuple[str, ...] = TASKS,
) -> Path:
    """Write ``n`` synthetic rows: ``out_dir/videos/NNNNNN.mp4`` and ``out_dir/data.jsonl``.

    Rows are ThinkStream's RL format plus SFT ``thoughts`` (one short think per second saying
    what appeared or disappeared), ``task``, and for checking ``objects`` (every
    :class:`SynthObject` as a dict), ``duration_s``, ``video_fps`` and ``frame_px``. Row ``i``
    has the ``i``-th task round-robin and depends only on ``(seed, i)``: the same seed gives
    the same files.

    Args:
        out_dir: output folder (created).
        n: number of videos.
        seed: non-negative random seed.
        size: frame side, pixels.
        video_fps: frames per second of the videos.
        min_seconds, max_seconds: range of video lengths, whole seconds (at least 4).
        tasks: task families to cycle through, from :data:`TASKS`.

    Returns:
        The path of ``data.jsonl``.

    Raises:
        ValueError: an argument is out of range or a task is unknown.
    """
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, got n={n}, seed={seed}")
    if not 4 <= min_seconds <= max_seconds:
        raise ValueError(f"need 4 <= min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if size < 64 or video_fps < 1:
        raise ValueError(f"need size >= 64 and video_fps >= 1, got {size}, {video_fps}")
    if not tasks or set(tasks) - set(TASKS):
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(n), desc="synthesizing videos", unit="video"):
        rng = np.random.default_rng([seed, i])
        task = tasks[i % len(tasks)]
        seconds = int(rng.integers(min_seconds, max_seconds + 1))
        objects, queries = _BUILDERS[task](rng, seconds, size, video_fps)
        video = f"videos/{i:06d}.mp4"
        write_video(out_dir / video, objects, seconds, size=size, fps=video_fps)
        row = StreamRow(
            id=f"synth-{i:06d}",
            video_path=video,
            queries=queries,
            thoughts=_thoughts(objects, seconds, size),
            task=task,
            meta={
                "objects": [asdict(o) for o in objects],
                "duration_s": seconds,
                "video_fps": video_fps,
                "frame_px": size,
            },
        )
        lines.append(json.dumps(row.to_dict()) + "\n")
    path = out_dir / "data.jsonl"
    path.write_text("".join(lines))
    return path


def _event_timing(rng, seconds, size, fps):
    colour, shape = _kind(rng)
    t = int(rng.integers(2, seconds - 1))
    objects = [_place(rng, [], colour, shape, t, min(seconds, t + int(rng.integers(2, 5))), size, fps)]
    _distractors(rng, objects, seconds, size, fps, lambda c, s, a, b: (c, s) != (colour, shape))
    return objects, [Query(f"Tell me when a {colour} {shape} appears.", 0.0, "yes", float(t))]


def _state_mc(rng, seconds, size, fps):
    colour, shape = _kind(rng)
    t_q = int(rng.integers(2, seconds))
    appear = int(rng.integers(max(0, t_q - 3), t_q + 1))
    disappear = int(rng.integers(t_q + 1, min(seconds, t_q + 3) + 1))
    objects = [_place(rng, [], colour, shape, appear, disappear, size, fps)]
    if rng.random() < 0.5:
        options, answer = list(COLOURS), list(COLOURS).index(colour)
        text, key = f"What colour is the {shape} now?", 1
    else:
        options, answer = list(SHAPES), SHAPES.index(shape)
        text, key = f"What shape is the {colour} object now?", 0
    text += "".join(f" {_LETTERS[j]}. {opt}" for j, opt in enumerate(options))
    target = (colour, shape)[key]
    # no other shape on screen at t_q may share the asked-about attribute
    _distractors(
        rng, objects, seconds, size, fps, lambda c, s, a, b: (c, s)[key] != target or not a <= t_q < b
    )
    return objects, [Query(text, float(t_q), _LETTERS[answer], float(t_q))]


def _counting(rng, seconds, size, fps):
    colour, shape = _kind(rng)
    objects, t = [], int(rng.integers(0, 3))
    while t < seconds - 1 and len(objects) < 4:  # separate appearances, at least 1 s apart
        d = int(rng.integers(1, 3))
        objects.append(_place(rng, objects, colour, shape, t, min(seconds, t + d), size, fps))
        t += d + int(rng.integers(1, 4))
    appearances = [o.appear_s for o in objects]
    _distractors(rng, objects, seconds, size, fps, lambda c, s, a, b: (c, s) != (colour, shape))
    n_asks = min(int(rng.integers(2, 4)), seconds - 2)
    asks = sorted(int(x) for x in rng.choice(np.arange(2, seconds), n_asks, replace=False))
    text = f"How many {colour} {shape}s have appeared so far?"
    return objects, [Query(text, float(a), str(sum(s <= a for s in appearances)), float(a)) for a in asks]


_BUILDERS = {"event_timing": _event_timing, "state_mc": _state_mc, "counting": _counting}


def _kind(rng) -> tuple[str, str]:
    return str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))


def _place(rng, objects, colour, shape, appear, disappear, size, fps) -> SynthObject | None:
    """A new track that keeps at most MAX_VISIBLE shapes on screen and overlaps no visible
    one, or None if none was found. Never None when nothing else is visible meanwhile."""
    if any(sum(o.visible(t) for o in objects) >= MAX_VISIBLE for t in range(appear, disappear)):
        return None
    for _ in range(20):
        px = int(rng.integers(30, 41))
        lo, hi = px // 2 + 1, size - px // 2 - 1
        xs, ys = (int(v) for v in rng.integers(lo, hi, 2))
        xe, ye = (int(v) for v in np.clip(np.array([xs, ys]) + rng.integers(-20, 21, 2), lo, hi - 1))
        obj = SynthObject(colour, shape, appear, disappear, px, xs, ys, xe, ye)
        if not any(_overlap(obj, o, fps) for o in objects):
            return obj
    return None


def _overlap(a: SynthObject, b: SynthObject, fps: int, margin: int = 4) -> bool:
    for i in range(max(a.appear_s, b.appear_s) * fps, min(a.disappear_s, b.disappear_s) * fps):
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box(i / fps), b.box(i / fps)
        if ax0 < bx1 + margin and bx0 < ax1 + margin and ay0 < by1 + margin and by0 < ay1 + margin:
            return True
    return False


def _distractors(rng, objects, seconds, size, fps, allowed) -> None:
    """Add 1-3 other shapes whose ``(colour, shape, appear, disappear)`` pass ``allowed``."""
    for _ in range(int(rng.integers(1, 4))):
        for _ in range(10):
            colour, shape = _kind(rng)
            appear = int(rng.integers(0, seconds - 1))
            disappear = min(seconds, appear + int(rng.integers(2, 6)))
            if not allowed(colour, shape, appear, disappear):
                continue
            obj = _place(rng, objects, colour, shape, appear, disappear, size, fps)
            if obj is not None:
                objects.append(obj)
                break


def _thoughts(objects: list[SynthObject], seconds: int, size: int) -> list[Thought]:
    """One think per second: what disappeared and what appeared (and where) at that second."""
    thoughts = []
    for t in range(seconds):
        events = [f"{o.colour} {o.shape} disappears" for o in objects if o.disappear_s == t]
        events += [
            f"{o.colour} {o.shape} appears at {_region(o, t, size)}" for o in objects if o.appear_s == t
        ]
        thoughts.append(
            Thought(float(t), ", ".join(events) or ("no shapes yet" if t == 0 else "nothing new"))
        )
    return thoughts


def _region(o: SynthObject, t: float, size: int) -> str:
    x0, y0, x1, y1 = o.box(t)
    row = ("top", "", "bottom")[min(2, 3 * (y0 + y1) // (2 * size))]
    col = ("left", "", "right")[min(2, 3 * (x0 + x1) // (2 * size))]
    return f"{row} {col}".strip() or "centre"
