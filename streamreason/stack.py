"""The components of a run, built from a recipe: one place, below the entry points.

Every job (``streamreason rollout``, the GRPO trainer, SFT, evaluation, the benchmark harness,
the verl backend's agent loop, ``bench/``) builds its model, processor, chat encoder, engine,
env pool, reward and dataset rows here, so they all roll out with the same components. Nothing
here knows which job it serves; the entry points hold only what they use (for example, only
GRPO with ``rl.kl_coef > 0`` builds a reference model).

``cfg`` is a recipe (:class:`streamreason.config.StreamReasonConfig`) or any object with the
sections a function reads (``model``, ``engine``, ``rollout``, ``env_pool``, ``rewards``).

Example::

    from streamreason.config import load_config
    from streamreason.stack import build_policy, make_env_pool, make_reward

    cfg = load_config("recipes/tiny_synthetic.yaml")
    policy = build_policy(cfg)                      # model, processor, encoder, engine
    with make_env_pool(cfg) as pool:
        trajs, failures = run_rollouts(rows, pool=pool, engine=policy.engine,
                                       encoder=policy.encoder, cfg=cfg.rollout)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamreason.errors import ConfigError


@dataclass
class DataConfig:
    """Datasets (JSONL rows in ThinkStream's format; relative video paths resolve against the
    file's folder). ``eval`` may be null: GRPO then runs no eval (``streamreason eval RECIPE``
    needs one). ``eval_rows`` caps the eval split (0 = all)."""

    train: str = "data/synth/train/data.jsonl"
    eval: str | None = "data/synth/eval/data.jsonl"
    eval_rows: int = 0


@dataclass
class PolicyStack:
    """What a job rolls out with.

    Attributes:
        model: the Hugging Face policy module (``torch.nn.Module``), or None when the engine
            holds its own weights (vLLM) and no learner asked for one.
        processor: the checkpoint's processor (tokenizer, video processor).
        encoder: :class:`~streamreason.rollout.chat.ChatEncoder` with the recipe's protocol.
        engine: the generation :class:`~streamreason.rollout.engine.Engine` (None when built
            ``with_engine=False``).
    """

    model: Any
    processor: Any
    encoder: Any
    engine: Any


def resolve_device(device: str) -> str:
    """``engine.device`` with ``auto`` resolved: ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_policy(
    cfg,
    *,
    seed: int | None = None,
    dtype: str | None = None,
    need_model: bool = False,
    with_engine: bool = True,
    video_limit: int | None = None,
) -> PolicyStack:
    """Model, processor, chat encoder and engine of a recipe.

    Args:
        cfg: the recipe (``model``, ``engine``, ``rollout``).
        seed: the engine's sampler seed (default ``engine.seed``).
        dtype: the model's dtype (``float32`` | ``bfloat16`` | ``float16``; default
            ``engine.dtype``); trainers pass ``optim.dtype``.
        need_model: with ``engine.name=vllm``, also load the Hugging Face module (a learner's);
            other engines always load it (they generate with it).
        with_engine: False builds no engine (``engine`` is None; the model is loaded): a job
            that trains without generating (SFT) starts no vLLM.
        video_limit: the engine's limit of chunk videos per prompt (default: what the recipe's
            memory policy can hold, :func:`max_videos`).

    Raises:
        ConfigError: the checkpoint folder is missing, or the engine is not registered.
    """
    import torch
    from transformers import AutoProcessor

    from streamreason.modeling import check_model_dir, load_policy, random_policy
    from streamreason.rollout.engine import make_engine

    ec, mem = cfg.engine, cfg.rollout.memory
    device = resolve_device(ec.device)
    seed = ec.seed if seed is None else seed
    torch_dtype = getattr(torch, dtype or ec.dtype)
    load = random_policy if ec.load_format == "dummy" else load_policy
    masked = mem.eviction == "mask"  # span-masked attention: SDPA, never FlashAttention
    if not with_engine:
        model, processor = load(cfg.model, dtype=torch_dtype, device=device, span_masks=masked)
        engine = None
    elif ec.name == "vllm":
        check_model_dir(cfg.model)
        model, processor = (None, AutoProcessor.from_pretrained(cfg.model))
        if need_model:
            model, processor = load(cfg.model, dtype=torch_dtype, device=device, span_masks=masked)
        engine = make_engine(
            "vllm", model_dir=cfg.model, tokenizer=processor.tokenizer,
            max_videos=video_limit or max_videos(cfg), load_format=ec.load_format,
            dtype=ec.dtype, gpu_memory_utilization=ec.gpu_memory_utilization, max_model_len=ec.max_model_len,
            enforce_eager=ec.enforce_eager, enable_prefix_caching=ec.enable_prefix_caching,
            skip_mm_profiling=ec.skip_mm_profiling,
            tensor_parallel_size=ec.tensor_parallel_size, seed=seed,
            span_masks=masked, cache_salt=mem.cache_salt,
        )  # fmt: skip
    else:
        model, processor = load(cfg.model, dtype=torch_dtype, device=device, span_masks=masked)
        engine = make_engine(ec.name, model=model, tokenizer=processor.tokenizer,
                             max_batch_size=ec.max_batch_size, seed=seed)  # fmt: skip
    return PolicyStack(model, processor, make_encoder(processor, cfg.rollout), engine)


def make_encoder(processor, rollout):
    """The :class:`~streamreason.rollout.chat.ChatEncoder` of a checkpoint's processor under the
    ``rollout`` section's protocol (``rollout.protocol.name``)."""
    from streamreason.rollout.chat import ChatEncoder
    from streamreason.rollout.protocol import get_protocol

    return ChatEncoder(processor, get_protocol(rollout.protocol.name))


def max_videos(cfg) -> int:
    """Most chunk videos one prompt can hold under the recipe's memory policy (the engine's
    per-prompt video limit, :meth:`~streamreason.rollout.memory.MemoryConfig.max_videos`;
    ``visual_window``: ``W + B - 1``, or every chunk without eviction). Streams without
    ``env.max_chunks`` count as 1024 chunks: the engine needs a finite limit."""
    return cfg.rollout.memory.max_videos(cfg.rollout.env.max_chunks or 1024)


def make_env_pool(cfg):
    """The recipe's :class:`~streamreason.envs.pool.EnvPool` (``env_pool`` section; a context
    manager that shuts its Ray actors down)."""
    from streamreason.envs.pool import EnvPool

    return EnvPool(cfg.rollout.env, cfg.env_pool.num_workers, cfg.env_pool.in_process)


def make_reward(cfg):
    """The recipe's :class:`~streamreason.rewards.composite.CompositeReward` (``rewards``)."""
    from streamreason.rewards.composite import CompositeReward

    return CompositeReward(cfg.rewards)


def load_rows(path: str | Path, limit: int = 0):
    """``(rows, n_malformed)`` of a row JSONL (the first ``limit`` rows when > 0).

    Malformed lines are skipped and counted (:func:`streamreason.types.read_rows`).

    Raises:
        ConfigError: the file is missing or holds no valid row.
    """
    from streamreason.types import read_rows

    if not Path(path).is_file():
        raise ConfigError(f"data file {str(path)!r} does not exist (set data.train / data.eval)")
    rows, bad = read_rows(path)
    if not rows:
        raise ConfigError(f"data file {str(path)!r} has no valid rows ({len(bad)} malformed)")
    return rows[:limit] if limit else rows, len(bad)
