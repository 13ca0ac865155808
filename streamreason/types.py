"""Plain data types shared by every stage: dataset rows, queries, and the text-level episode
that reward functions score.

The row format on disk is ThinkStream's RL JSONL (CASIA-IVA-Lab/ThinkStream's RL data), one JSON object per
line::

    {"id": "synth-000001",                       # optional; defaults to file:line
     "video_path": "videos/000001.mp4",          # relative paths resolve against the JSONL's folder
     "conversations": [
        {"role": "user", "content": "Tell me when a red square appears.", "timestamp": 0.0},
        {"role": "assistant", "content": "yes", "timestamp": 5.0}],
     "thoughts": [{"timestamp": 0.0, "think": "a blue circle, top left"}],   # optional (SFT)
     "task": "event_timing",                     # optional
     "video_end": 12.0}                          # optional: the stream stops here, seconds

Each user message is a query asked at ``timestamp`` (seconds from the start of the video); the
assistant message after it holds the query's ground-truth literal answer and the time from which
that answer is correct. Timestamps may be numbers or ``"HH:MM:SS[.fff]"`` strings.
``video_end`` (ThinkStream's eval format) cuts the stream at that time, e.g. at the question of a
benchmark that shows the video only up to the question.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamreason.errors import RowError

CHUNK_SLACK = 1e-9
"""Chunks added to ``time_s / chunk_seconds`` before flooring, in :func:`chunk_index`."""


def chunk_index(time_s: float, chunk_seconds: float, n_chunks: int | None = None) -> int:
    """The chunk whose window holds ``time_s``: the one rule from a time to a chunk.

    Chunk ``k`` covers ``[k * chunk_seconds, (k + 1) * chunk_seconds)`` seconds, so the index is
    ``floor(time_s / chunk_seconds + CHUNK_SLACK)``. The slack (1e-9 chunks, far below any
    timestamp's resolution) keeps a time on a chunk boundary in the chunk it starts: the float
    quotient can fall just short of the integer (``0.3 / 0.1 == 2.9999999999999996``), which
    would put 0.3 s in chunk 2 of 0.1 s chunks instead of chunk 3.

    Args:
        time_s: seconds from the start of the stream. A negative time gives a negative index
            (nothing clamps it; rows reject negative times when they are read).
        chunk_seconds: chunk length, seconds (> 0).
        n_chunks: chunks in the stream, when known: a time at or past the stream's end maps to
            its last chunk, ``n_chunks - 1`` (the env shows queries asked there with the last
            chunk). None: no upper clamp.

    Raises:
        OverflowError, ValueError: ``time_s`` is infinite or NaN.

    >>> chunk_index(0.3, 0.1), chunk_index(2.5, 1.0), chunk_index(9.0, 1.0, n_chunks=4)
    (3, 2, 3)
    """
    k = math.floor(time_s / chunk_seconds + CHUNK_SLACK)
    return k if n_chunks is None else min(k, n_chunks - 1)


@dataclass(frozen=True)
class Query:
    """A user query inside a stream.

    Attributes:
        text: what the user asks.
        time_s: when it is asked, seconds from the video start.
        answer: the ground-truth literal (``"B"``, ``"yes"``, ``"3"``, free text), or None.
        answer_time_s: from when ``answer`` is correct (evidence visible), seconds; None when
            unknown. For a question about the past it equals ``time_s``.
    """

    text: str
    time_s: float
    answer: str | None = None
    answer_time_s: float | None = None


@dataclass(frozen=True)
class Thought:
    """A gold think trace at ``time_s`` seconds (ThinkStream SFT ``thoughts``)."""

    time_s: float
    think: str


@dataclass
class StreamRow:
    """One streaming sample: a video and the queries asked while it plays."""

    id: str
    video_path: str
    queries: list[Query]
    thoughts: list[Thought] = field(default_factory=list)
    task: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    end_s: float | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str, base_dir: str | Path | None = None) -> StreamRow:
        """Parse one row in ThinkStream's RL/SFT format.

        Args:
            d: the decoded JSON object.
            where: locator used in errors and as the default id, e.g. ``"train.jsonl:12"``.
            base_dir: folder that relative ``video_path`` values are resolved against.

        Raises:
            RowError: naming ``where`` and the field that is missing or malformed.
        """
        if not isinstance(d, dict):
            raise RowError(where, f"expected a JSON object, got {type(d).__name__}")
        video = d.get("video_path", d.get("video"))
        if not isinstance(video, str) or not video:
            raise RowError(where, "missing 'video_path' (a non-empty string)")
        if base_dir is not None and not Path(video).is_absolute():
            video = str(Path(base_dir) / video)
        convs = d.get("conversations")
        if not isinstance(convs, list) or not convs:
            raise RowError(where, "missing 'conversations' (a non-empty list of messages)")
        queries: list[Query] = []
        for i, msg in enumerate(convs):
            if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
                raise RowError(where, f"conversations[{i}] must be an object with role 'user' or 'assistant'")
            content = msg.get("content")
            if not isinstance(content, str):
                raise RowError(where, f"conversations[{i}].content must be a string")
            t = _seconds(msg.get("timestamp"), where, f"conversations[{i}].timestamp")
            if msg["role"] == "user":
                queries.append(Query(text=content, time_s=t))
            else:
                if not queries or queries[-1].answer is not None:
                    raise RowError(
                        where, f"conversations[{i}] is an assistant answer with no user query before it"
                    )
                q = queries[-1]
                queries[-1] = Query(q.text, q.time_s, content.strip(), max(t, q.time_s))
        raw_thoughts = d.get("thoughts") or []
        if not isinstance(raw_thoughts, list):
            raise RowError(where, f"'thoughts' must be a list, got {type(raw_thoughts).__name__}")
        thoughts = []
        for i, th in enumerate(raw_thoughts):
            if not isinstance(th, dict) or not isinstance(th.get("think"), str):
                raise RowError(where, f"thoughts[{i}] must be an object with a string 'think'")
            thoughts.append(
                Thought(_seconds(th.get("timestamp"), where, f"thoughts[{i}].timestamp"), th["think"])
            )
        end_s = None
        if d.get("video_end") is not None:
            end_s = _seconds(d["video_end"], where, "video_end")
            if not end_s > 0:
                raise RowError(where, f"video_end must be > 0 seconds, got {d['video_end']!r}")
        task = d.get("task")
        if task is not None and not isinstance(task, str):
            raise RowError(where, f"'task' must be a string, got {type(task).__name__}")
        known = {"id", "video_path", "video", "conversations", "thoughts", "task", "video_end"}
        return cls(
            id=str(d.get("id", where)),
            video_path=video,
            queries=queries,
            thoughts=sorted(thoughts, key=lambda x: x.time_s),
            task=task,
            meta={k: v for k, v in d.items() if k not in known},
            end_s=end_s,
        )

    def to_dict(self) -> dict[str, Any]:
        """The row in ThinkStream's format (inverse of :meth:`from_dict`)."""
        convs: list[dict[str, Any]] = []
        for q in self.queries:
            convs.append({"role": "user", "content": q.text, "timestamp": q.time_s})
            if q.answer is not None:
                at = q.time_s if q.answer_time_s is None else q.answer_time_s
                convs.append({"role": "assistant", "content": q.answer, "timestamp": at})
        d: dict[str, Any] = {"id": self.id, "video_path": self.video_path, "conversations": convs}
        if self.thoughts:
            d["thoughts"] = [{"timestamp": t.time_s, "think": t.think} for t in self.thoughts]
        if self.task is not None:
            d["task"] = self.task
        if self.end_s is not None:
            d["video_end"] = self.end_s
        d.update(self.meta)
        return d


def read_rows(path: str | Path) -> tuple[list[StreamRow], list[RowError]]:
    """Read a JSONL of rows, keeping the good ones and collecting the bad ones.

    Returns:
        ``(rows, errors)``: every parseable row, and one :class:`RowError` (naming
        ``file:line``) per malformed line (not UTF-8, not JSON, not a row). Blank lines are
        skipped.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    rows, errors = [], []
    # surrogateescape: a line that is not UTF-8 is one bad row, not the end of the file.
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rows.append(StreamRow.from_dict(json_line(line, where), where, base_dir=path.parent))
            except RowError as e:
                errors.append(e)
    return rows, errors


def json_line(line: str, where: str) -> Any:
    """One decoded JSONL line, read with ``errors="surrogateescape"``.

    Raises:
        RowError: naming ``where``: the line is not UTF-8 or not valid JSON (syntax, an
            integer over Python's digit limit, nesting too deep).
    """
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowError(where, f"not UTF-8 text (at column {e.start + 1})") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise RowError(where, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise RowError(where, f"not valid JSON ({e})") from None


def finite_float(v: Any) -> float | None:
    """``v`` as a float when it is an int or float (not a bool) with a finite float value; None
    otherwise (NaN, inf, an int too large for a float, any other type)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _seconds(v: Any, where: str, name: str) -> float:
    if isinstance(v, bool):
        raise RowError(where, f"{name} must be seconds or 'HH:MM:SS', got {v!r}")
    if isinstance(v, (int, float)):
        try:
            t = float(v)
        except OverflowError:
            raise RowError(where, f"{name} must be a finite time >= 0, got an integer too large") from None
    elif isinstance(v, str):
        try:
            parts = [float(p) for p in v.strip().split(":")]
        except ValueError:
            raise RowError(where, f"{name} must be seconds or 'HH:MM:SS', got {v!r}") from None
        if not 1 <= len(parts) <= 3:
            raise RowError(where, f"{name} must be seconds or 'HH:MM:SS', got {v!r}")
        t = 0.0
        for p in parts:
            t = t * 60 + p
    else:
        raise RowError(where, f"{name} must be seconds or 'HH:MM:SS', got {v!r}")
    if not math.isfinite(t) or t < 0:
        raise RowError(where, f"{name} must be a finite time >= 0, got {v!r}")
    return t


@dataclass(frozen=True)
class TurnOutcome:
    """What the policy did in one turn (one chunk), at the text level.

    Attributes:
        chunk_index: 0-based chunk of the turn.
        start_s, end_s: the chunk's window, seconds.
        action: the protocol's decision: ``"response"``, ``"silent"``, ``"standby"`` or
            ``"invalid"`` (no decision could be parsed).
        think: the think trace, or None when there was none.
        think_tokens: tokens inside the think span (0 when none).
        response: the text after ``<response>`` (stripped) when ``action == "response"``.
        format_ok: the turn matched the protocol's format exactly.
        text: the decoded turn, end-of-turn token removed (what ThinkStream's rewards read,
            ``rewards/thinkstream.py``); None in episodes built without it.
    """

    chunk_index: int
    start_s: float
    end_s: float
    action: str
    think: str | None = None
    think_tokens: int = 0
    response: str | None = None
    format_ok: bool = False
    text: str | None = None


@dataclass
class Episode:
    """One trajectory at the text level: what reward functions receive.

    Attributes:
        row_id: the dataset row's id.
        chunk_seconds: chunk length in seconds (turn ``k`` covers ``[k*cs, (k+1)*cs)``).
        queries: the row's queries with ground truth.
        turns: one :class:`TurnOutcome` per chunk, in order.
        meta: the row's extra fields (task, data source, ...).
        n_chunks: chunks in the stream, when known: times past its end map to its last chunk,
            as the env shows queries asked at or after the end with the last chunk.
    """

    row_id: str
    chunk_seconds: float
    queries: list[Query]
    turns: list[TurnOutcome]
    meta: dict[str, Any] = field(default_factory=dict)
    n_chunks: int | None = None

    def chunk_of(self, time_s: float) -> int:
        """The chunk whose window holds ``time_s`` (:func:`chunk_index`), at most the last chunk
        when :attr:`n_chunks` is known."""
        return chunk_index(time_s, self.chunk_seconds, self.n_chunks)
