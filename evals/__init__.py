"""Streaming benchmarks: a registry of benchmarks (:mod:`~streamreason.evals.registry`), the
built-in ones (OVO-Bench, StreamingBench, synthetic), and the harness that runs any of them
(:mod:`~streamreason.evals.harness`).

Importing this package registers the built-in benchmarks and their annotation converters
(``data convert --from ovo|streamingbench-real|streamingbench-proactive``, registered into
:mod:`streamreason.envs.convert`). A new built-in benchmark's module is imported here too.
"""

from streamreason.envs.convert import list_formats
from streamreason.evals import ovo, streamingbench, synthetic  # noqa: F401  (each registers itself)
from streamreason.evals.registry import (
    Benchmark,
    Prediction,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
)

BENCHMARKS = tuple(list_benchmarks())
"""The built-in benchmarks' names (``--benchmark`` choices)."""

FORMATS = tuple(list_formats())
"""Every format ``data convert --from`` reads: the training-data ones of
:mod:`streamreason.envs.convert` and the benchmarks' annotation formats registered above."""

__all__ = [
    "BENCHMARKS",
    "FORMATS",
    "Benchmark",
    "Prediction",
    "get_benchmark",
    "list_benchmarks",
    "register_benchmark",
]
