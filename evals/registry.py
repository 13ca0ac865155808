"""The benchmark registry: one :class:`Benchmark` object per streaming benchmark.

A benchmark says everything the harness (:func:`~streamreason.evals.harness.run_benchmark`) and
``streamreason eval score`` need to know about it: how its annotation files become streams, how
one response is scored, which result files it writes, and how those files are scored. Neither
of them tells benchmarks apart; both look the benchmark up here by name.

Add a benchmark with one new module in ``evals/`` and one registration::

    # evals/mybench.py
    from streamreason.envs.convert import read_source, register_format
    from streamreason.evals.registry import Benchmark, register_benchmark

    @register_format("mybench")  # optional: also ``streamreason data convert --from mybench``
    def read_mybench(path):
        ...  # yields (locator, [StreamRow, ...] or RowError) per annotation entry

    @register_benchmark("mybench")
    class MyBench(Benchmark):
        def convert_file(self, path, video_root):
            return read_source("mybench", path, video_root)

        def item_score(self, row, prediction): ...
        def write_results(self, anno, rows, preds, out_dir, model_name): ...
        def official_score(self, files, model_name): ...
        def score_results_dir(self, results_dir, model_name): ...

then import the module in ``evals/__init__.py`` beside the built-ins (``ovo``,
``streamingbench``, ``synthetic``), so that the command line lists it.
``tests/evals/test_registry.py`` is the test template: a toy benchmark registered in the test
module and run end to end.

Anything a benchmark needs to know about a stream (the kind of a StreamingBench question, the
OVO-Bench entry a probe comes from) is stored in ``StreamRow.meta`` by its converter and read
from there, never parsed from row ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamreason.envs.convert import ConvertReport
from streamreason.errors import ConfigError
from streamreason.registry import Registry
from streamreason.types import StreamRow

PREDICTIONS = "predictions.jsonl"
"""The harness's per-question output in its output folder: one JSON line per
:class:`Prediction` (its fields but ``polls``) plus ``score``, the benchmark's
:meth:`Benchmark.item_score`."""


@dataclass
class Prediction:
    """The policy's response to one question.

    Attributes:
        row_id, task: the stream and its task.
        query: index of the question in the stream (time order).
        asked_s, answer_time_s: when it is asked / answerable, seconds.
        ground_truth: the annotation's answer.
        response: the response text, or None (silent until the stream ended, or the row failed).
        response_s: end of the response's chunk, seconds (None without a response).
        timing_error_s: ``(response chunk - answerable chunk) * chunk_seconds``, seconds
            (negative: before the evidence); None without a response or an answer time.
        polls: ``(time, text)`` of every turn from the question on, until the response
            (StreamingBench proactive records them).
    """

    row_id: str
    task: str | None
    query: int
    asked_s: float
    answer_time_s: float | None
    ground_truth: str | None
    response: str | None = None
    response_s: float | None = None
    timing_error_s: float | None = None
    polls: tuple[tuple[float, str], ...] = ()


class Benchmark:
    """Base class of streaming benchmarks; subclasses register with :func:`register_benchmark`.

    Subclasses implement every method below but :meth:`rows`, which reads each annotation
    file with :meth:`convert_file`.

    Attributes:
        name: the registered name (``--benchmark NAME``), set by :func:`register_benchmark`.
    """

    name: str = ""

    def rows(self, anno_files: list[str], video_root: str | None) -> tuple[list[StreamRow], dict]:
        """The streams of the annotation files, in file order, and what the conversion found:
        ``{"entries": int, "errors": [str], "missing_videos": [row id]}``.

        Raises:
            ConfigError: no annotation file, or one that does not exist.
        """
        if not anno_files:
            raise ConfigError(f"--benchmark {self.name} needs --anno (the annotation file)")
        rows: list[StreamRow] = []
        info: dict[str, Any] = {"entries": 0, "errors": [], "missing_videos": []}
        for path in anno_files:
            if not Path(path).is_file():
                raise ConfigError(f"annotation file {path!r} does not exist")
            report = self.convert_file(path, video_root)
            rows += report.rows
            info["entries"] += report.entries
            info["errors"] += [str(e) for e in report.errors]
            info["missing_videos"] += [rid for rid, _ in report.missing_videos]
        return rows, info

    def convert_file(self, path: str, video_root: str | None) -> ConvertReport:
        """The streams of one annotation file (an existing file), with videos resolved under
        ``video_root`` (see :func:`~streamreason.envs.convert.read_source`).

        Raises:
            RowError: the file as a whole cannot be read.
        """
        raise NotImplementedError

    def item_score(self, row: StreamRow, prediction: Prediction) -> float | None:
        """The benchmark's score of one prediction on ``row`` (no response scores as the rules
        say, usually 0), or None when the question cannot be scored (no ground truth)."""
        raise NotImplementedError

    def write_results(self, anno: list[str], rows: list[StreamRow], preds: dict[str, list[Prediction]],
                      out_dir: Path, model_name: str) -> list[Path]:  # fmt: skip
        """Write the benchmark's own result files for the evaluated ``rows`` under ``out_dir``.

        Args:
            anno: the annotation files the rows came from.
            rows: the evaluated streams.
            preds: row id -> the predictions of its queries, in query order.
            out_dir: the harness's output folder (exists; :data:`PREDICTIONS` is written).
            model_name: the model's name in the files.

        Returns:
            the written files, as :meth:`official_score` takes them.
        """
        raise NotImplementedError

    def official_score(self, files: list[Path], model_name: str) -> tuple[dict, Any]:
        """Score result files by the benchmark's own rules.

        Returns:
            ``(scores, printable)``: the scores as JSON-able data (``scores.json``), and what
            the command line prints (a string or a rich renderable).
        """
        raise NotImplementedError

    def score_results_dir(self, results_dir: str | Path, model_name: str | None) -> tuple[dict, Any]:
        """:meth:`official_score` of the result files in a folder (``streamreason eval score``).

        Args:
            results_dir: the folder holding the benchmark's result files.
            model_name: the model's name in them; None finds it in the folder or its files.

        Raises:
            StreamReasonError: the folder holds no result files of this benchmark, or they are
                malformed (naming the file).
        """
        raise NotImplementedError


_BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def register_benchmark(name: str):
    """Class decorator registering a :class:`Benchmark` subclass under ``name`` (one instance).

    Raises:
        ValueError: ``name`` is already registered.
    """

    def wrap(cls: type[Benchmark]) -> type[Benchmark]:
        cls.name = name  # before instantiating, so that __init__ sees it
        _BENCHMARKS.register(name, cls())
        return cls

    return wrap


def list_benchmarks() -> list[str]:
    """The registered benchmark names, sorted."""
    return _BENCHMARKS.names()


def get_benchmark(name: str) -> Benchmark:
    """The benchmark registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    return _BENCHMARKS.get(name)
