"""Dataset converters: other projects' training data and streaming benchmarks into our rows.

``streamreason data convert --from FORMAT IN OUT --video-root DIR`` writes the project's row
format (ThinkStream's RL JSONL, :mod:`streamreason.types`) from a registered format:

==============================  =========================================================
``thinkstream``                 ThinkStream RL JSONL (``video_path``, ``conversations``)
``thinkstream-sft``             ThinkStream SFT JSONL: the same plus ``thoughts`` (required)
``vst``                         VST RL parquet (``prompt``, ``video_context``, ``data_source``,
                                ``reward_model.ground_truth``, ``extra_info.duration``)
``ovo``                         OVO-Bench ``ovo_bench_new.json`` (all 12 tasks;
                                registered by :mod:`streamreason.evals.ovo`)
``streamingbench-real``         StreamingBench ``questions_real.json``
                                (registered by :mod:`streamreason.evals.streamingbench`)
``streamingbench-proactive``    StreamingBench ``questions_proactive.json`` (the same)
==============================  =========================================================

The training-data formats are registered here; a benchmark's annotation format is registered
by its benchmark module (:func:`register_format`), beside the scorer that reads the same files,
because this stage package must not import the benchmarks (``evals/`` sits downstream of
``envs/``). Importing :mod:`streamreason.evals` registers them all; :func:`list_formats` lists
what is registered.

Formats are those of the projects' released code and data. Every source entry either becomes
rows or is reported with its locator and reason; videos are looked up under the video root, and
missing ones are counted and listed (``OUT.missing.txt``), never fatal: their rows are still
written unless ``skip_missing``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamreason.errors import RowError
from streamreason.registry import Registry
from streamreason.types import Query, StreamRow, finite_float, json_line

# An entry reader yields, per source entry, (locator, rows) or (locator, RowError).
Reader = Callable[[Path], Iterator[tuple[str, "list[StreamRow] | RowError"]]]

_READERS: Registry[Reader] = Registry(
    "format",
    sort_names=False,
    unknown=lambda name, names: f"unknown format {name!r}; expected one of {', '.join(names)}",
)


def register_format(name: str) -> Callable[[Reader], Reader]:
    """Decorator registering an entry reader as the converter of format ``name``
    (``data convert --from NAME``, :func:`read_source`).

    A reader takes the source file and yields, per source entry, ``(locator, rows)`` or
    ``(locator, RowError)``; video paths are resolved afterwards by :func:`read_source`.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorate(reader: Reader) -> Reader:
        return _READERS.register(name, reader)

    return decorate


def list_formats() -> list[str]:
    """The registered formats, in registration order (this module's first)."""
    return _READERS.names()


def video_under(root: Path, path: str) -> str:
    """``path`` (as a dataset names it, e.g. ``./videos/x.mp4``) resolved under ``root``;
    absolute paths are kept.

    Raises:
        ValueError: ``path`` holds a NUL or a lone surrogate (no file system accepts it).
    """
    p = Path(path)
    return str(p if p.is_absolute() else (root / p).resolve())


def read_json(path: str | Path) -> Any:
    """A whole JSON file (a benchmark's annotations or result file).

    Raises:
        RowError: naming the file: no such file (``where`` is the path as given), not UTF-8, or
            not valid JSON (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise RowError(str(path), "no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RowError(path.name, f"not UTF-8 text (byte {e.start + 1})") from None
    except json.JSONDecodeError as e:
        raise RowError(path.name, f"not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # an integer over the digit limit, nesting too deep
        raise RowError(path.name, f"not valid JSON ({e})") from None


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # a non-UTF-8 line is one bad entry
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{i}"
            try:
                yield where, json_line(line, where)
            except RowError as e:
                yield where, e


def _thinkstream(path: Path, need_thoughts: bool) -> Iterator[tuple[str, list[StreamRow] | RowError]]:
    for where, d in _json_lines(path):
        if isinstance(d, RowError):
            yield where, d
            continue
        try:
            if isinstance(d, dict) and "id" not in d:
                d = {"id": where, **d}
            row = StreamRow.from_dict(d, where)
            if need_thoughts and not row.thoughts:
                raise RowError(where, "no 'thoughts' (an RL row? convert it with --from thinkstream)")
        except RowError as e:
            yield where, e
            continue
        if row.task is None:  # ThinkStream's released rows carry their category here
            category = row.meta.get("interaction_mode") or row.meta.get("response_format")
            row.task = category if isinstance(category, str) else None  # a task is a string
        yield where, [row]


@register_format("thinkstream")
def read_thinkstream(path: Path):
    """ThinkStream RL JSONL (its released RL data): one row per line, kept as is (extra fields
    such as ``interaction_mode`` go to ``meta``)."""
    return _thinkstream(path, need_thoughts=False)


@register_format("thinkstream-sft")
def read_thinkstream_sft(path: Path):
    """ThinkStream SFT JSONL: RL rows plus gold ``thoughts`` (an entry without them is an error)."""
    return _thinkstream(path, need_thoughts=True)


_VST_KINDS = {"multiple choice": "choice", "yes or no": "yesno", "numerical": "number"}
_BOXED_INSTRUCTION = re.compile(r"\s*Output the final answer in \\boxed\{\}\.?\s*$")


@register_format("vst")
def read_vst(path: Path) -> Iterator[tuple[str, list[StreamRow] | RowError]]:
    """VST RL parquet (VST-RL's ``video_memory`` dataset), one row per entry.

    VST asks its question once, on the last turn, after the whole video: the query is asked and
    answerable at ``extra_info.duration`` seconds. ``data_source`` is the answer type
    (``multiple choice``: ground truth ``["A."]`` becomes ``"A"``; ``yes or no``: ``"yes"``/``"no"``;
    ``numerical``: the number as written, or the text when it is no plain number, e.g. ``1/2``,
    which VST grades with mathruler). ``meta["ground_truth"]`` keeps VST's own list form
    (``["B."]``) for its ``compute_score`` (a verl-signature custom reward). A trailing ``\\boxed{}`` instruction is removed from
    the prompt: our protocol answers after ``<response>``.
    """
    import pyarrow.parquet as pq

    from streamreason.answers import parse_answer

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise RowError(path.name, f"cannot read as parquet: {e}") from None
    for i, d in enumerate(table.to_pylist()):
        where = f"{path.name}:row {i}"
        try:
            video = d.get("video_context")
            prompt = d.get("prompt")
            if not isinstance(video, str) or not video:
                raise RowError(where, "missing 'video_context' (the video path)")
            if not isinstance(prompt, str) or not prompt.strip():
                raise RowError(where, "missing 'prompt' (the problem text)")
            reward_model = d.get("reward_model") or {}
            if not isinstance(reward_model, dict):
                raise RowError(where, f"'reward_model' must be a struct, got {type(reward_model).__name__}")
            raw_gt = reward_model.get("ground_truth")
            gt = raw_gt[0] if isinstance(raw_gt, list) and raw_gt else raw_gt
            if not isinstance(gt, str) or not gt.strip():
                raise RowError(where, "missing 'reward_model.ground_truth'")
            extra = d.get("extra_info") or {}
            if not isinstance(extra, dict):
                raise RowError(where, f"'extra_info' must be a struct, got {type(extra).__name__}")
            duration = finite_float(extra.get("duration"))
            if duration is None or duration <= 0:
                raise RowError(
                    where, f"'extra_info.duration' must be > 0 seconds, got {extra.get('duration')!r}"
                )
            source = d.get("data_source")
            if source is not None and not isinstance(source, str):
                raise RowError(where, f"'data_source' must be a string, got {type(source).__name__}")
            kind = _VST_KINDS.get(source)
            answer = parse_answer(gt, kind) if kind else gt.strip()
            if answer is None and kind == "number":  # "1/2", "\frac{1}{2}": VST grades them with mathruler
                answer = gt.strip()
            if answer is None:
                raise RowError(where, f"ground truth {gt!r} is not a {source!r} answer")
        except RowError as e:
            yield where, e
            continue
        rid = str(extra.get("origin_id") or extra.get("index") or f"vst-{i}")
        text = _BOXED_INSTRUCTION.sub("", prompt.strip())
        q = Query(text=text, time_s=duration, answer=answer, answer_time_s=duration)
        # VST's compute_score reads ground_truth[0] of its own list form: keep it for verl-signature rewards
        truth = [str(x) for x in raw_gt] if isinstance(raw_gt, list) else [gt]
        meta = {"data_source": source, "duration": duration, "ground_truth": truth}
        yield where, [StreamRow(id=rid, video_path=video, queries=[q], task=source, meta=meta)]


@dataclass
class ConvertReport:
    """What a conversion did.

    Attributes:
        entries: source entries read (lines, parquet rows, annotation entries).
        rows: rows produced (a benchmark entry may give several, e.g. one per question).
        errors: one :class:`RowError` per entry that could not be converted (named by locator).
        missing_videos: ``(row id, video path)`` of rows whose video is not under the root.
        per_task: task -> ``[rows, queries]``.
    """

    entries: int = 0
    rows: list[StreamRow] = field(default_factory=list, repr=False)
    errors: list[RowError] = field(default_factory=list)
    missing_videos: list[tuple[str, str]] = field(default_factory=list)
    per_task: dict[str, list[int]] = field(default_factory=dict)


def read_source(fmt: str, src: str | Path, video_root: str | Path | None = None) -> ConvertReport:
    """Convert ``src`` (of format ``fmt``) into rows in memory, resolving videos under
    ``video_root`` (default: ``src``'s folder) and checking that they exist.

    Raises:
        ConfigError: unknown ``fmt`` (the message lists the registered formats).
        RowError: ``src`` does not exist (``where`` is the path as given, reason ``"no such
            file"``), or as a whole cannot be read (not JSON / not parquet / wrong top level).
    """
    reader = _READERS.get(fmt)
    src = Path(src)
    if not src.is_file():
        raise RowError(str(src), "no such file")
    root = Path(video_root) if video_root is not None else src.parent
    report = ConvertReport()
    rows_per: Counter[str] = Counter()
    queries_per: Counter[str] = Counter()
    exists: dict[str, bool] = {}
    for where, got in reader(src):
        report.entries += 1
        if isinstance(got, list):
            got = _resolve_videos(got, root, where)
        if isinstance(got, RowError):
            report.errors.append(got)
            continue
        for row in got:
            if row.video_path not in exists:
                exists[row.video_path] = _is_file(row.video_path)
            if not exists[row.video_path]:
                report.missing_videos.append((row.id, row.video_path))
            task = row.task or "-"
            rows_per[task] += 1
            queries_per[task] += len(row.queries)
            report.rows.append(row)
    report.per_task = {t: [rows_per[t], queries_per[t]] for t in sorted(rows_per)}
    return report


def _resolve_videos(rows: list[StreamRow], root: Path, where: str) -> list[StreamRow] | RowError:
    """``rows`` with their videos resolved under ``root`` (:func:`video_under`), or a RowError
    naming ``where`` and the first video path that no file system accepts."""
    paths = []
    for row in rows:
        try:
            paths.append(video_under(root, row.video_path))
        except ValueError as e:
            return RowError(where, f"video path {row.video_path!r} is not a file name ({e}); fix the entry")
    for row, path in zip(rows, paths):
        row.video_path = path
    return rows


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except OSError:  # e.g. a name too long for the file system: no such video either
        return False


def convert(fmt: str, src: str | Path, out: str | Path, video_root: str | Path | None = None,
            skip_missing: bool = False) -> ConvertReport:  # fmt: skip
    """Convert ``src`` into the row JSONL ``out`` (see :func:`read_source`).

    Also writes ``OUT.missing.txt`` (``row id<TAB>video path`` per row whose video is missing)
    and ``OUT.errors.txt`` (one line per entry that did not convert) when there are any.
    With ``skip_missing`` the rows of missing videos are left out of ``out``.

    Returns:
        the :class:`ConvertReport`.

    Raises:
        ConfigError, RowError: as :func:`read_source`.
    """
    report = read_source(fmt, src, video_root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = {rid for rid, _ in report.missing_videos}
    # backslashreplace: a lone surrogate (from a "\\ud800" escape in the source, so inside a JSON
    # string) is written as that escape again instead of failing the whole file.
    with open(out, "w", encoding="utf-8", errors="backslashreplace") as f:
        for row in report.rows:
            if not (skip_missing and row.id in missing):
                f.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
    for suffix, lines in ((".missing.txt", [f"{r}\t{p}" for r, p in report.missing_videos]),
                          (".errors.txt", [str(e) for e in report.errors])):  # fmt: skip
        side = out.with_name(out.name + suffix)
        if lines:
            side.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="backslashreplace")
        elif side.exists():
            side.unlink()
    return report
