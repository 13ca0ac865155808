"""Fixtures of the benchmark tests: the real annotation files (../shared/data, beside the
checkout), the official scorers, synthetic streams with real MP4s, and a gold-answer engine."""

import math
from pathlib import Path

import pytest

import streamreason.recipes
from streamreason.rollout.engine import Engine, Generation

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


@pytest.fixture(scope="session")
def tiny_recipe() -> str:
    """The tiny synthetic recipe (``recipes/tiny_synthetic.yaml``)."""
    return str(Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Three synthetic streams of 6-8 s with real MP4s (``data synth``): the rows' JSONL."""
    from streamreason.envs.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), n=3, seed=3, min_seconds=6, max_seconds=8)


@pytest.fixture
def eval_cfg(tiny_recipe, tiny_model_dir):
    """The tiny recipe on the tiny model, greedy, env workers in process."""
    from streamreason.config import load_config

    return load_config(
        tiny_recipe, [f"model={tiny_model_dir}", "env_pool.in_process=true", "rollout.sampling.temperature=0"]
    )


class Oracle(Engine):
    """Answers each question of ``rows`` right in the chunk where it becomes answerable (the
    last chunk for times at or past the stream's end), silent otherwise and on other rows."""

    def __init__(self, encoder, rows, chunk_seconds):
        self.encoder, self.cs, self.rows = encoder, chunk_seconds, {r.id: r for r in rows}

    def generate(self, requests, sampling, max_new_tokens, think_budget=None):
        out = []
        for req in requests:
            row_id, _, k = req.key
            row = self.rows.get(row_id)
            last = math.ceil(row.end_s / self.cs) - 1 if row and row.end_s else math.inf
            answer = next((q.answer for q in row.queries
                           if min(math.floor(q.answer_time_s / self.cs), last) == k), None) if row else None  # fmt: skip
            text = self.encoder.protocol.render("watching", "response" if answer else "silent", answer)
            ids = [*self.encoder.text(text), self.encoder.end_of_turn_id]
            out.append(Generation(ids, [0.0] * len(ids), [False] * len(ids), "stop"))
        return out


@pytest.fixture
def gold_stack():
    """``gold_stack(cfg, rows) -> (encoder, engine)`` for ``run_benchmark(stack=...)``: the
    recipe's chat encoder and an :class:`Oracle` answering ``rows``."""
    from streamreason.stack import build_policy

    def build(cfg, rows):
        encoder = build_policy(cfg).encoder
        return encoder, Oracle(encoder, rows, cfg.rollout.env.chunk_seconds)

    return build
