"""Session fixtures shared by every test folder: the tiny model, built once."""

from __future__ import annotations

import pytest


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
    """Tests marked ``gpu`` run only where CUDA is available (``pytest -m gpu`` on the device)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
