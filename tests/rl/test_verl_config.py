"""verl's PPO trainer config from our recipes (``rl/verl_config.py``), composed on CPU.

The golden file pins the overrides for the ThinkStream recipe; after an intended change,
regenerate it with ``STREAMREASON_UPDATE_GOLDEN=1 pytest tests/rl/test_verl_config.py`` and
review the diff.
"""

import os
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig

import streamreason.recipes
from streamreason.config import load_config
from streamreason.errors import ConfigError
from streamreason.rl.verl_config import _compose, compose_verl_config, context_lengths, verl_overrides

RECIPES = Path(streamreason.recipes.__file__).parent
GOLDEN = Path(__file__).parent / "golden" / "verl_thinkstream_rlvr.yaml"
PATHS = dict(
    train_files="/run/train.parquet",
    val_files="/run/val.parquet",
    agent_loop_config="/run/agent_loop.yaml",
    run_dir="/run",
)
REQUIRED = ["model=/models/qwen2.5-vl-3b-sft", "data.train=/data/train.jsonl", "data.eval=/data/eval.jsonl"]


def thinkstream(*overrides):
    return load_config(RECIPES / "thinkstream_rlvr.yaml", [*REQUIRED, *overrides])


def tiny(*overrides):
    return load_config(RECIPES / "tiny_synthetic.yaml", list(overrides))


def has_key(cfg: DictConfig, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():  # noqa: SIM118 (keeps ??? keys)
            return False
        node = node._get_node(part)
    return True


def test_overrides_match_golden():
    overrides = verl_overrides(thinkstream(), **PATHS)
    if os.environ.get("STREAMREASON_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump(overrides, default_flow_style=False, width=1000, sort_keys=False))
    assert overrides == yaml.safe_load(GOLDEN.read_text())


def test_context_lengths_follow_the_formula():
    # ThinkStream: v = 1 * 192 + 2, t = 64 + 30, n = 120, W = 20, B = 1
    assert context_lengths(thinkstream()) == (15616, 512)  # 256 + 120*94 + 21*194 = 15610; 288
    # tiny: v = 16 + 2, t = 64 + 16, n = 10, W = 6, B = 2
    assert context_lengths(tiny()) == (1280, 256)  # 256 + 10*80 + 8*18 = 1200; 2*98 = 196
    # keep_all_video: W = n = 100 → 256 + 100*80 + 100*18 = 10056, rounded up to 256s
    assert (
        context_lengths(tiny("rollout.memory.keep_all_video=true", "rollout.env.max_chunks=100"))[0] == 10240
    )


def test_thinkstream_composes_and_passes_verl_validation():
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = thinkstream()
    conf = compose_verl_config(cfg, **PATHS)
    actor, rollout = conf.actor_rollout_ref.actor, conf.actor_rollout_ref.rollout
    assert conf.algorithm.adv_estimator == "grpo"
    assert rollout.n == 8 and rollout.name == "vllm"
    assert actor.use_kl_loss is True and actor.kl_loss_coef == 1e-3
    assert actor.optim.lr == 2e-7 and actor.optim.lr_scheduler_type == "cosine"
    assert conf.trainer.use_v1 is True
    assert rollout.prompt_length == context_lengths(cfg)[0] == conf.data.max_prompt_length
    assert rollout.max_model_len == sum(context_lengths(cfg))
    assert conf.reward.reward_model.enable is False and conf.reward.num_workers == 0
    assert conf.trainer.default_local_dir == "/run/checkpoints" and conf.trainer.experiment_name == "run"
    validate_config(conf, use_reference_policy=need_reference_policy(conf), use_critic=need_critic(conf))
    assert need_reference_policy(conf) and not need_critic(conf)


def test_passthrough_merges_on_top_and_unknown_keys_fail():
    key = "verl.actor_rollout_ref.rollout.gpu_memory_utilization"
    conf = compose_verl_config(thinkstream(f"{key}=0.3"), **PATHS)
    assert conf.actor_rollout_ref.rollout.gpu_memory_utilization == 0.3
    # a free-form dict of the yaml ({}) takes new keys
    conf = compose_verl_config(
        thinkstream("verl.actor_rollout_ref.rollout.engine_kwargs.vllm.limit_mm_per_prompt.video=21"), **PATHS
    )
    assert conf.actor_rollout_ref.rollout.engine_kwargs.vllm.limit_mm_per_prompt.video == 21

    with pytest.raises(ConfigError) as e:
        compose_verl_config(thinkstream("verl.actor_rollout_ref.rollout.gpu_memory_utilisation=0.3"), **PATHS)
    assert "verl.actor_rollout_ref.rollout.gpu_memory_utilisation" in str(e.value)
    assert "gpu_memory_utilization" in str(e.value)


def test_every_override_key_exists_in_verl_defaults():
    defaults = _compose([])
    for cfg in (thinkstream("optim.lora.rank=8"), tiny()):
        overrides = verl_overrides(cfg, **PATHS)
        keys = [item.split("=", 1)[0] for item in overrides]
        assert not [k for k in keys if k[0] in "+~"]
        assert [k for k in keys if not has_key(defaults, k)] == []


def test_tiny_recipe_composes():
    cfg = tiny(
        "trainer.checkpoint_every=0", "trainer.wandb_project=demo", "model=/models/a,b=c",
        "optim.grad_clip=0", "optim.dtype=bfloat16",
    )  # fmt: skip
    conf = compose_verl_config(cfg, **PATHS)
    actor = conf.actor_rollout_ref.actor
    assert actor.use_kl_loss is False
    assert actor.optim.lr_scheduler_type == "constant"
    assert actor.optim.clip_grad == float("inf")  # 0 = no clipping
    assert actor.fsdp_config.model_dtype == "bf16"
    assert actor.ppo_mini_batch_size == 8 and actor.ppo_micro_batch_size_per_gpu == 16
    assert conf.actor_rollout_ref.rollout.top_k == -1  # ours 0 = off, vLLM's -1
    assert conf.actor_rollout_ref.model.path == "/models/a,b=c"  # quoted through Hydra
    assert conf.trainer.save_freq == 40  # 0 = at the end only
    assert (
        list(conf.trainer.logger) == ["console", "file", "tensorboard", "wandb"]
        and conf.trainer.project_name == "demo"
    )


def test_skip_mm_profiling_reaches_verls_vllm_engine_kwargs():
    assert (
        "skip_mm_profiling"
        not in compose_verl_config(tiny(), **PATHS).actor_rollout_ref.rollout.engine_kwargs.vllm
    )
    conf = compose_verl_config(tiny("engine.skip_mm_profiling=true"), **PATHS)
    assert conf.actor_rollout_ref.rollout.engine_kwargs.vllm.skip_mm_profiling is True
