"""Fixtures for the trainer tests: a tiny model and small synthetic train/eval splits."""

from pathlib import Path

import pytest

import streamreason.recipes

RECIPE = str(Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml")


@pytest.fixture(scope="session")
def synth_splits(tmp_path_factory):
    from streamreason.envs.synthetic import synthesize

    root = tmp_path_factory.mktemp("splits")
    train = synthesize(root / "train", n=6, seed=0, min_seconds=4, max_seconds=5)
    evals = synthesize(root / "eval", n=2, seed=1, min_seconds=4, max_seconds=5)
    return train, evals


def _small(model_dir, splits, run_dir):
    train, evals = splits
    return [
        f"model={model_dir}", f"data.train={train}", f"data.eval={evals}", f"trainer.run_dir={run_dir}",
        "rollout.group_size=2", "rollout.env.max_chunks=4", "rollout.protocol.max_new_tokens=8",
        "trainer.rows_per_step=2", "trainer.eval_samples=1", "trainer.eval_every=0", "trainer.tensorboard=false",
        "env_pool.in_process=true", "rl.micro_batch_rows=4",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def sft_model_dir(tiny_model_dir, synth_splits, tmp_path_factory):
    """The tiny model after a short SFT warm-start (`streamreason sft`): well-formed turns,
    so GRPO groups have reward variance and updates happen."""
    from streamreason.cli import main

    run = tmp_path_factory.mktemp("sft") / "run"
    main(["sft", RECIPE, *_small(tiny_model_dir, synth_splits, run), "sft.epochs=12", "sft.rows_per_step=2"])
    return run / "final"


@pytest.fixture()
def small_overrides(sft_model_dir, synth_splits, tmp_path):
    """Overrides that make the demo recipe a few-second run from the SFT checkpoint."""
    return _small(sft_model_dir, synth_splits, tmp_path / "run")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, synth_splits):
    """``(model, processor, encoder, rows)``: the tiny policy (fp32, CPU; one per test module, as
    tests train it), its watch-think-speak encoder and three synthetic rows."""
    from streamreason.modeling import load_policy
    from streamreason.rollout.chat import ChatEncoder
    from streamreason.rollout.protocol import get_protocol
    from streamreason.types import read_rows

    model, processor = load_policy(tiny_model_dir)
    rows, _ = read_rows(synth_splits[0])
    return model, processor, ChatEncoder(processor, get_protocol("watch_think_speak")), rows[:3]
