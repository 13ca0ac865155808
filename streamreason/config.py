"""Recipes: typed OmegaConf configs, YAML files and ``key=value`` overrides.

A recipe is a YAML file whose keys follow :class:`StreamReasonConfig` (each section's
dataclass lives beside the code it configures). ``load_config(path, overrides)`` merges the
schema's defaults, the file and the overrides; an unknown key is an error naming the key and
the closest valid one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamreason.envs.pool import EnvPoolConfig
from streamreason.rewards.composite import RewardConfig
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import OptimConfig
from streamreason.rl.sft import SFTConfig
from streamreason.rl.trainer import TrainerConfig
from streamreason.rl.verl_backend import ClusterConfig
from streamreason.rollout.engine import EngineConfig
from streamreason.rollout.loop import RolloutConfig
from streamreason.schema import load_structured
from streamreason.stack import DataConfig


@dataclass
class StreamReasonConfig:
    """A whole recipe.

    Attributes:
        model: checkpoint folder of the policy (the tiny model or any Qwen-VL checkpoint).
        rollout: env, protocol, memory, sampling, group size.
        engine: generation engine.
        env_pool: env actors.
        rewards: reward weights, parameters and custom rewards.
        data: train and eval JSONL.
        rl: GRPO loss, batching and epochs (``rl/grpo.py``).
        optim: optimizer, schedule, precision, LoRA (``rl/learner.py``).
        sft: the SFT warm-start (``rl/sft.py``).
        trainer: steps, eval, checkpoints, run directory, backend (``rl/trainer.py``).
        cluster: GPUs, nodes and offload of the verl backend.
        verl: verl-native settings passed through to verl's config as they are, e.g.
            ``verl.actor_rollout_ref.rollout.gpu_memory_utilization=0.5`` (``rl/verl_config.py``).
    """

    model: str = "models/tiny"
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    env_pool: EnvPoolConfig = field(default_factory=EnvPoolConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rl: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    verl: dict[str, Any] = field(default_factory=dict)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> StreamReasonConfig:
    """A recipe: the schema's defaults, the YAML file ``path`` and ``key=value`` ``overrides``
    (e.g. ``["rollout.memory.window_chunks=8"]``), merged in that order.

    Raises:
        ConfigError: unknown key (naming it and the closest valid key), wrong type or bad value
            (naming the key and the override it came from), an override that is not
            ``key=value``, a missing or unparsable recipe file (:func:`streamreason.schema.load_structured`).
    """
    return load_structured(path, overrides, StreamReasonConfig)
