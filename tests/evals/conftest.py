"""The real benchmark annotation files (../shared/data, beside the checkout)."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
OVO = DATA / "ovo_bench" / "ovo_bench_new.json"
SB_REAL = DATA / "streamingbench" / "questions_real.json"
SB_PROACTIVE = DATA / "streamingbench" / "questions_proactive.json"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not OVO.is_file():
        pytest.fail(f"{DATA} is missing: the benchmark files live in ../shared/data beside the checkout")
    return DATA


def _official(module: str):
    """A verbatim copy of an official scorer beside this file, imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module, Path(__file__).with_name(f"{module}.py"))
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture(scope="session")
def official_ovo_scorer():
    """OVO-Bench's own ``OVOBenchOfflineScore`` (``official_ovo_score.py``, verbatim)."""
    return _official("official_ovo_score").OVOBenchOfflineScore


@pytest.fixture(scope="session")
def official_streamingbench_count():
    """StreamingBench's own ``count`` (``official_streamingbench_count.py``, verbatim):
    ``count(args)`` with ``args.task``, ``args.src``, ``args.model``; it writes
    ``{model}_stats.json`` and ``.csv`` to the working directory."""
    return _official("official_streamingbench_count").count
