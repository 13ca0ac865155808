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


@pytest.fixture(scope="session")
def official_ovo_scorer():
    """OVO-Bench's own ``OVOBenchOfflineScore`` (``official_ovo_score.py``, verbatim)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "official_ovo_score", Path(__file__).with_name("official_ovo_score.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OVOBenchOfflineScore
