"""Recipes: typed OmegaConf configs, YAML files and ``key=value`` overrides.

A recipe is a YAML file whose keys follow :class:`StreamReasonConfig` (each section's
dataclass lives beside the code it configures). ``load_config(path, overrides)`` merges the
schema's defaults, the file and the overrides; an unknown key is an error naming the key and
the closest valid one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from streamreason.errors import ConfigError, StreamReasonError
from streamreason.rewards.composite import RewardConfig
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import OptimConfig
from streamreason.rl.sft import SFTConfig
from streamreason.rl.trainer import DataConfig, TrainerConfig
from streamreason.rollout.loop import RolloutConfig

# What merging a layer into the schema raises on a bad value: OmegaConf's errors, and an int too
# large for a float field (OmegaConf re-raises the OverflowError with the key in its text).
_BAD_VALUE = (OmegaConfBaseException, OverflowError)


@dataclass
class EngineConfig:
    """Generation engine.

    Attributes:
        name: registered engine: ``transformers`` (CPU or one GPU) or ``vllm`` (GPU).
        device: ``cpu``, ``cuda``, ``cuda:1``; ``auto`` picks CUDA when available.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        max_batch_size: contexts per generate call (transformers engine).
        seed: sampler seed.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache).
        tensor_parallel_size: GPUs per vLLM engine.
        max_model_len: vLLM context length in tokens (0: the model's own).
        enforce_eager: skip CUDA-graph capture (fast start, slower decode).
        enable_prefix_caching: reuse the KV of shared prompt prefixes across turns.
        skip_mm_profiling: vLLM profiles memory with the language model only, not the vision
            encoder on maximum-size videos (start-up minutes shorter; leave GPU memory outside
            ``gpu_memory_utilization`` for the encoder's activations).
    """

    name: str = "transformers"
    device: str = "auto"
    dtype: str = "float32"
    max_batch_size: int = 64
    seed: int = 0
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    max_model_len: int = 0
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    skip_mm_profiling: bool = False


@dataclass
class ClusterConfig:
    """Resources of the verl backend (``trainer.backend=verl``).

    Attributes:
        nodes: machines in the Ray cluster.
        gpus_per_node: GPUs used on each.
        fsdp_offload: offload FSDP parameters and optimizer state to CPU (actor and reference).
        agent_workers: verl agent-loop workers (Ray actors running the streaming loop).
    """

    nodes: int = 1
    gpus_per_node: int = 1
    fsdp_offload: bool = False
    agent_workers: int = 2


@dataclass
class EnvPoolConfig:
    """Where envs run: ``num_workers`` Ray actors, or in this process (debugging)."""

    num_workers: int = 2
    in_process: bool = False


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


def _valid_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k in node:
        full = f"{prefix}{k}"
        keys.append(full)
        child = node._get_node(k)
        if isinstance(child, DictConfig) and OmegaConf.get_type(child) not in (dict, None):
            keys.extend(_valid_keys(child, f"{full}."))
    return keys


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    schema: type = StreamReasonConfig,
):
    """Build a typed config from a recipe file and ``key=value`` overrides.

    Args:
        path: YAML recipe, or None for the schema's defaults.
        overrides: dotlist entries, e.g. ``["rollout.memory.window_chunks=8"]``.
        schema: the dataclass the recipe follows.

    Returns:
        an instance of ``schema`` (validated by each section's ``__post_init__``).

    Raises:
        ConfigError: unknown key (naming it and the closest valid key), wrong type or bad value
            (naming the key, and the override it came from), an override that is not
            ``key=value`` or whose value is not YAML, a missing or unparsable recipe file, or one
            that is not a mapping.
    """
    base = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"recipe {str(path)!r} does not exist")
        try:
            recipe = OmegaConf.load(path)
        except Exception as e:  # yaml errors come in several types
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(recipe, DictConfig):
            raise ConfigError(f"recipe {str(path)!r} must be a mapping of config keys, not a list")
        layers.append(("recipe " + str(path), recipe))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        # One layer per override, so that an error names the override it comes from.
        try:
            layers.append((f"command line {item!r}", OmegaConf.from_dotlist([item])))
        except Exception as e:  # the value is not YAML (`k=,`), or OmegaConf rejects the key
            reason = " ".join(str(e).split())
            raise ConfigError(f"override {item!r} does not parse ({reason}); quote the value") from None
    cfg = base
    for where, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except ConfigKeyError as e:
            key = e.full_key or str(e.key)
            close = difflib.get_close_matches(
                key, [k for k in _valid_keys(base) if k != key], n=1, cutoff=0.5
            )
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r} ({where}){hint}") from None
        except _BAD_VALUE as e:
            key = getattr(e, "full_key", None) or _failing_key(cfg, layer)
            msg = getattr(e, "msg", None) or str(e).splitlines()[0]
            raise ConfigError(f"bad value for {key!r} ({where}): {msg}") from None
    # A recipe marks what the user must supply with ???; merging keeps the schema's default
    # there, so check the recipe itself against the overrides.
    given = {item.split("=", 1)[0] for item in overrides}
    try:
        missing = sorted(
            k for _, layer in layers[:1] if path is not None for k in OmegaConf.missing_keys(layer)
        )
    except OmegaConfBaseException as e:  # an interpolation that does not resolve
        raise ConfigError(f"bad value for {e.full_key!r} (recipe {str(path)}): {e.msg}") from None
    missing = [k for k in missing if k not in given]
    if missing:
        raise ConfigError(f"recipe {str(path)!r} needs {missing}: pass them, e.g. {missing[0]}=...")
    try:
        return OmegaConf.to_object(cfg)
    except StreamReasonError:
        raise
    except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve
        raise ConfigError(f"bad value for {e.full_key!r}: {e.msg}") from None
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None


def _failing_key(cfg: DictConfig, layer: DictConfig, prefix: str = "") -> str:
    """The dotted key of ``layer`` that does not merge into ``cfg``, as deep as it goes
    (OmegaConf leaves ``full_key`` empty when a section is replaced by a value of the wrong type)."""
    for key in layer:
        try:
            OmegaConf.merge(cfg, OmegaConf.masked_copy(layer, [key]))
        except _BAD_VALUE:
            mine, theirs = cfg._get_node(key), layer._get_node(key)
            if isinstance(mine, DictConfig) and isinstance(theirs, DictConfig):
                return _failing_key(mine, theirs, f"{prefix}{key}.") or f"{prefix}{key}"
            return f"{prefix}{key}"
    return ""


def to_yaml(cfg) -> str:
    """The resolved config as YAML (for run directories and logs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
