"""Recipes: typed schema, overrides, and errors that name the key."""

from pathlib import Path

import pytest

import streamreason.recipes
from streamreason.config import load_config
from streamreason.errors import ConfigError

RECIPES = Path(streamreason.recipes.__file__).parent


def test_thinkstream_recipe_has_the_published_settings():
    cfg = load_config(RECIPES / "thinkstream_rlvr.yaml", ["model=/ckpt/qwen2.5-vl-3b"])
    assert cfg.model == "/ckpt/qwen2.5-vl-3b"
    assert (cfg.rl.kl_coef, cfg.rl.kl_estimator, cfg.optim.lr, cfg.optim.schedule) == (
        1e-3,
        "low_var_kl",
        2e-7,
        "cosine",
    )
    assert cfg.rewards.weights == {
        "format": 0.2,
        "thinkstream_timing": 0.2,
        "thinkstream_correctness": 0.4,
        "thinkstream_efficiency": 0.2,
        "timing": 0.0,  # ours, reported only (docs/rewards.md)
        "correctness": 0.0,
        "efficiency": 0.0,
    }
    assert (cfg.rollout.group_size, cfg.rollout.memory.window_chunks, cfg.rollout.protocol.think_budget) == (
        8,
        20,
        20,
    )


def test_a_value_the_recipe_leaves_to_the_user_is_required():
    with pytest.raises(ConfigError, match=r"needs \['model'\]"):
        load_config(RECIPES / "thinkstream_rlvr.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.clip_ratio_hgh=0.3", "did you mean 'rl.clip_ratio_high'"),
        ("rollout.memory.window=3", "did you mean 'rollout.memory.window_chunks'"),
        ("trainer.steps=many", "trainer.steps"),
        ("optim.schedule=linear", "optim.schedule"),
        ("rl.loss_agg_mode=mean", "rl.loss_agg_mode"),
        ("nokey", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPES / "tiny_synthetic.yaml", [override])


def test_dict_sections_merge_and_override():
    cfg = load_config(
        RECIPES / "tiny_synthetic.yaml",
        ["rewards.weights.timing=0.5", "rewards.params.timing.slack_seconds=2"],
    )
    assert cfg.rewards.weights["timing"] == 0.5 and cfg.rewards.weights["format"] == 0.1  # the recipe's, kept
    assert cfg.rewards.params["timing"] == {"slack_seconds": 2}
    assert cfg.rewards.params["efficiency"] == {"min_think_tokens": 8, "think_step_tokens": 2}
