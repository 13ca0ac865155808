"""Streamo's recipes end to end on the tiny model on CPU: its SFT (``recipes/streamo_sft.yaml``:
Silence/Standby/Response gold turns, focal class-balanced state tokens) and GRPO from that SFT's
final checkpoint (``recipes/streamo_grpo.yaml``)."""

import math
from pathlib import Path

import pytest

import streamreason.recipes
from streamreason.cli import main
from streamreason.config import load_config
from streamreason.rl.metrics import read_metrics
from streamreason.rl.sft import gold_turn
from streamreason.rollout.protocol import get_protocol
from streamreason.types import Query, StreamRow, Thought

from .conftest import _small

RECIPES = Path(streamreason.recipes.__file__).parent
SFT, GRPO = str(RECIPES / "streamo_sft.yaml"), str(RECIPES / "streamo_grpo.yaml")
# CPU: fp32 weights (the recipes train in bf16 on GPUs)
CPU = ["optim.dtype=float32", "engine.dtype=float32", "engine.device=cpu"]


class _Encoder:
    """What ``gold_turn`` reads of a ChatEncoder: its protocol."""

    def __init__(self, name):
        self.protocol = get_protocol(name)


def test_streamo_gold_turns_say_the_three_states():
    """A query asked at 1 s and answered at 4 s: silent before it, standby while it waits (Streamo's
    ``build_frame_states`` marks the event's frames; our rows give only the wait), the answer at 4 s;
    a turn without thoughts is the state alone, as Streamo's turns are."""
    row = StreamRow("r", "v.mp4", [Query("Tell me when a red square appears.", 1.0, "yes", 4.0)])
    streamo = [gold_turn(_Encoder("streamo"), row, k, 1.0) for k in range(6)]
    assert streamo == ["<silent>", "<standby>", "<standby>", "<standby>", "<response>yes", "<silent>"]
    wts = [gold_turn(_Encoder("watch_think_speak"), row, k, 1.0) for k in range(6)]
    assert wts == ["<think></think><silent>"] * 4 + [
        "<think></think><response>yes",
        "<think></think><silent>",
    ]
    thought = StreamRow("t", "v.mp4", row.queries, [Thought(2.0, "a shape moves")])
    assert gold_turn(_Encoder("streamo"), thought, 2, 1.0) == "<think>a shape moves</think><standby>"


def test_streamo_sft_recipe_is_streamos_settings():
    cfg = load_config(SFT, ["model=m", "data.train=t.jsonl"])
    env, sft = cfg.rollout.env, cfg.sft
    assert (cfg.rollout.protocol.name, env.chunk_seconds, env.frames_per_chunk) == ("streamo", 1.0, 2)
    assert (env.min_pixels, env.max_pixels, sft.lr, sft.epochs) == (3136, 100352, 1e-5, 1)
    assert (sft.balance_decisions, sft.alpha_counts, sft.focal_gamma) == (True, "trajectory", 2.0)
    grpo = load_config(GRPO, ["model=m", "data.train=t.jsonl", "data.eval=e.jsonl"])
    assert grpo.rollout.protocol.name == "streamo"
    assert {k: v for k, v in grpo.rewards.weights.items() if v} == {
        "format": 0.2, "timing": 0.2, "correctness": 0.4, "response_count": 0.2
    }  # fmt: skip


@pytest.fixture(scope="module")
def streamo_sft_run(tiny_model_dir, synth_splits, tmp_path_factory):
    run = tmp_path_factory.mktemp("streamo") / "sft"
    main(
        ["sft", SFT, *_small(tiny_model_dir, synth_splits, run), *CPU, "sft.epochs=2", "sft.rows_per_step=2"]
    )
    return run


def test_streamo_sft_runs_with_the_focal_weighting(streamo_sft_run):
    steps = [r for r in read_metrics(streamo_sft_run / "metrics.jsonl") if "sft/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))  # 6 rows, 2 a step, 2 epochs
    for r in steps:
        assert math.isfinite(r["sft/loss"]) and r["sft/grad_norm"] > 0
        assert 0 < r["sft/decision_focal"] < 1  # (1 - p)^2 on the state tokens: the focal term is on
    assert (streamo_sft_run / "final" / "model.safetensors").is_file()


def test_streamo_grpo_runs_from_the_sft_checkpoint(streamo_sft_run, synth_splits, tmp_path):
    run = tmp_path / "grpo"
    main(["train", GRPO, *_small(streamo_sft_run / "final", synth_splits, run), *CPU, "trainer.steps=2"])
    records = read_metrics(run / "metrics.jsonl")
    steps = {r["step"]: r for r in records if "reward" in r}
    assert sorted(steps) == [1, 2], records
    for r in steps.values():
        assert all(f"reward/{k}" in r for k in ("format", "timing", "correctness", "response_count")), sorted(
            r
        )
    assert any(k.startswith("eval/") for r in records for k in r)
    assert (run / "final" / "model.safetensors").is_file()
