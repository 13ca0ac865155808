"""Session fixtures shared by every test folder: the tiny model, built once."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (a red CI is a real bug, never bad luck);
# HYPOTHESIS_PROFILE=explore draws new ones on each run, to hunt for bugs.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built tiny default model (``streamreason model tiny``)."""
    from streamreason.modeling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    """``(model, processor)`` of the tiny model, fp32 on CPU."""
    from streamreason.modeling import load_policy

    return load_policy(tiny_model_dir)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs for the module's tests (real actors, real processes)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is available (``pytest -m gpu`` on the device);
    tests marked ``slow`` (soak runs) only when asked for with ``-m slow``."""
    import torch

    skips = []
    if not torch.cuda.is_available():
        skips.append(("gpu", pytest.mark.skip(reason="needs a CUDA GPU")))
    if "slow" not in (config.getoption("markexpr") or ""):
        skips.append(("slow", pytest.mark.skip(reason="slow (soak): run with -m slow")))
    for item in items:
        for mark, skip in skips:
            if mark in item.keywords:
                item.add_marker(skip)
