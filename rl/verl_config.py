"""verl's PPO trainer config from a recipe (``trainer.backend=verl``).

verl 0.9.1's V1 trainer (``verl/trainer/main_ppo.py``, ``trainer.use_v1=true``) reads a Hydra
config composed from ``verl/trainer/config/ppo_trainer.yaml``. :func:`verl_overrides` writes the
recipe as Hydra override strings for that config; :func:`compose_verl_config` composes them (on a
CPU-only machine too: nothing is launched) and merges the recipe's ``verl`` section, verl-native
settings passed through as they are, on top. Our keys map to verl's like this:

- ``rl`` → ``algorithm`` (GRPO) and ``actor_rollout_ref.actor`` (clip ratios, loss, KL loss,
  entropy, epochs, batch sizes); ``optim`` → ``actor.optim``, ``actor.fsdp_config`` and ``model``;
  ``rollout`` and ``engine`` → ``actor_rollout_ref.rollout`` (vLLM, our agent loop); ``trainer``
  and ``cluster`` → ``data``, ``trainer`` and the FSDP offload flags.
- Trainer: ``trainer.v1.trainer_mode=streamreason``, verl's sync V1 trainer with this project's
  GRPO advantage (exactly 0 for a group of equal rewards, ``rl.adv_epsilon``) and mini-batch
  count (:class:`~streamreason.rl.verl_trainer.StreamPPOTrainer`), its settings in
  ``trainer.v1.streamreason``; Ray's runtime environment sets ``VERL_USE_EXTERNAL_MODULES`` so
  that every Ray process imports it. ``algorithm.adv_estimator`` stays ``grpo``: verl's V1
  trainer computes a multi-output trajectory's advantage from its last output only for ``grpo``.
- Batch units: ``data.train_batch_size`` counts prompts (dataset rows), micro-batches count
  training rows per GPU. verl cuts a step's training rows into mini-batches of
  ``ppo_mini_batch_size · rollout.n`` rows; a trajectory yields several rows (one per eviction
  block), so the trainer sets ``ppo_mini_batch_size`` at each step from the step's rows: every
  rollout takes ``rl.ppo_epochs × rl.mini_batches`` optimizer steps, as the local trainer does.
  The value written here (``trainer.rows_per_step // rl.mini_batches``, right for one row per
  trajectory) is the one verl's startup checks see.
- Rewards: our agent loop scores each trajectory itself and sets ``reward_score``. verl's agent
  loop calls a reward-loop worker only when ``reward_score`` is None
  (``AgentLoopWorker._compute_score``), and the V1 trainer scores batches with a colocated reward
  model only when ``RewardLoopManager.reward_loop_worker_handles`` is None, which happens only with
  ``reward.reward_model.enable=true``. So ``reward.reward_model.enable=false`` (no reward model)
  and ``reward.num_workers=0``: no reward-loop workers start, and verl's default rule-based scorer
  (``default_compute_score``, keyed by ``data_source``) can never run. A trajectory left unscored
  fails loudly (an empty worker list) instead of being scored by the wrong function.
- Not expressible in verl 0.9.1's config: ``rl.filter_zero_variance_groups`` (verl's nearest,
  ``algorithm.filter_groups``, refills the batch with fresh prompts: set it through ``verl.``
  if wanted), ``optim.lora.dropout`` (its FSDP LoRA has no dropout), fp32 compute (its FSDP engine
  autocasts to bf16 unless ``fsdp_config.mixed_precision``, a key absent from the yaml, is set), and
  ``optim.freeze_vision`` is written to ``actor.freeze_vision_tower``, which 0.9.1 declares but
  never reads. TensorBoard logs go to ``$TENSORBOARD_DIR`` (an environment variable, not a key).

Example:
    >>> from streamreason.config import load_config
    >>> cfg = load_config("recipes/thinkstream_rlvr.yaml", ["model=/ckpt", "data.train=t", "data.eval=e"])
    >>> conf = compose_verl_config(cfg, train_files="/run/train.parquet", val_files="/run/val.parquet",
    ...                            agent_loop_config="/run/agent_loop.yaml", run_dir="/run")
    >>> conf.actor_rollout_ref.rollout.n
    8
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from pathlib import Path

import hydra
import verl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from streamreason.errors import ConfigError
from streamreason.rl import verl_trainer
from streamreason.rl.verl_agent import AGENT_NAME
from streamreason.rl.verl_trainer import TRAINER_MODE
from streamreason.schema import valid_keys

logger = logging.getLogger(__name__)

VERL_CONFIG_DIR = Path(verl.__file__).parent / "trainer" / "config"
TOKEN_ROUNDING = 256
_FSDP_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}
_PARSER = OverridesParser.create()


def context_lengths(cfg) -> tuple[int, int]:
    """``(prompt_length, response_length)`` in tokens for verl's rollout and data settings.

    One training row covers one eviction block of B turns: its prompt is the whole context
    before the block, its response the block's turns (generated tokens and the env's chunks
    between them). With

    - v = video tokens per chunk = ceil(frames_per_chunk / 2) · (max_pixels // 28²) + 2 (two
      frames per temporal patch, one token per 28×28 pixels, vision start/end),
    - t = text tokens allowed per turn = 64 + ``rollout.protocol.max_new_tokens``,
    - n = ``rollout.env.max_chunks`` (120 when None),
    - m = the most chunk videos one prompt holds under the memory policy
      (``rollout.memory.max_videos(n)``: W + B − 1, or n without eviction), B = ``rollout.memory.evict_block``,

    prompt_length = 256 + n·t + min(m + 1, n)·v and response_length = min(B, n)·(t + v), each
    rounded up to a multiple of 256.
    """
    env, memory = cfg.rollout.env, cfg.rollout.memory
    v = math.ceil(env.frames_per_chunk / 2) * (env.max_pixels // (28 * 28)) + 2
    t = 64 + cfg.rollout.protocol.max_new_tokens
    n = env.max_chunks or 120
    b = memory.evict_block
    prompt = 256 + n * t + min(memory.max_videos(n) + 1, n) * v
    response = min(b, n) * (t + v)
    return _round_up(prompt), _round_up(response)


def verl_overrides(
    cfg, *, train_files: str, val_files: str, agent_loop_config: str, run_dir: str
) -> list[str]:
    """Hydra override strings (``key=value``) that express the recipe in verl's ppo_trainer config.

    Every key exists in verl's default config (no ``+key``).

    Args:
        cfg: a :class:`~streamreason.config.StreamReasonConfig`.
        train_files, val_files: the train and eval rows as verl datasets (parquet).
        agent_loop_config: YAML that registers our agent loop with verl.
        run_dir: run directory; checkpoints go to ``run_dir/checkpoints``, and its name is the
            experiment name.

    Raises:
        ConfigError: ``rollout.memory.eviction=mask``: verl 0.9.1's actor scores each output with
            a plain causal mask (``verl/workers/actor``: no per-sample attention mask without a
            fork), so it cannot train a span-masked trajectory row; use ``eviction=rewrite``.
    """
    if cfg.rollout.memory.eviction == "mask":
        raise ConfigError(
            "trainer.backend=verl does not support rollout.memory.eviction=mask: verl 0.9.1's actor computes "
            "log-probs with a plain causal mask, not the span mask a masked trajectory row needs; set "
            "rollout.memory.eviction=rewrite (one row per eviction block), or train with trainer.backend=local"
        )
    prompt_length, response_length = context_lengths(cfg)
    sampling, optim, rl, trainer = cfg.rollout.sampling, cfg.optim, cfg.rl, cfg.trainer
    top_k = sampling.top_k if sampling.top_k > 0 else -1  # vLLM: -1 disables top-k, 0 is invalid
    offload, dtype = cfg.cluster.fsdp_offload, _FSDP_DTYPE[optim.dtype]
    loggers = ["console", "file", *(["tensorboard"] if trainer.tensorboard else [])]
    loggers += ["wandb"] if trainer.wandb_project else []
    settings = {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": rl.norm_adv_by_std,
        "algorithm.use_kl_in_reward": False,
        "critic.enable": False,
        "actor_rollout_ref.model.path": os.path.abspath(os.path.expanduser(cfg.model)),
        "actor_rollout_ref.model.enable_gradient_checkpointing": optim.gradient_checkpointing,
        "actor_rollout_ref.actor.optim.lr": optim.lr,
        "actor_rollout_ref.actor.optim.weight_decay": optim.weight_decay,
        "actor_rollout_ref.actor.optim.betas": list(optim.betas),
        "actor_rollout_ref.actor.optim.override_optimizer_config": {"eps": optim.eps},
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": optim.warmup_ratio,
        "actor_rollout_ref.actor.optim.lr_scheduler_type": optim.schedule,
        # torch clips every gradient to zero at max_norm 0; ours means no clipping
        "actor_rollout_ref.actor.optim.clip_grad": optim.grad_clip if optim.grad_clip > 0 else math.inf,
        "actor_rollout_ref.actor.fsdp_config.param_offload": offload,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": offload,
        "actor_rollout_ref.actor.fsdp_config.model_dtype": dtype,
        "actor_rollout_ref.actor.fsdp_config.seed": trainer.seed,
        "actor_rollout_ref.actor.freeze_vision_tower": optim.freeze_vision,
        "actor_rollout_ref.actor.policy_loss.loss_mode": rl.policy_loss,
        "actor_rollout_ref.actor.clip_ratio_low": rl.clip_ratio_low,
        "actor_rollout_ref.actor.clip_ratio_high": rl.clip_ratio_high,
        "actor_rollout_ref.actor.clip_ratio_c": rl.clip_ratio_c,
        "actor_rollout_ref.actor.loss_agg_mode": rl.loss_agg_mode,
        "actor_rollout_ref.actor.use_kl_loss": rl.kl_coef > 0,
        "actor_rollout_ref.actor.kl_loss_coef": rl.kl_coef,
        "actor_rollout_ref.actor.kl_loss_type": rl.kl_estimator,
        "actor_rollout_ref.actor.entropy_coeff": rl.entropy_coef,
        "actor_rollout_ref.actor.ppo_epochs": rl.ppo_epochs,
        "actor_rollout_ref.actor.ppo_mini_batch_size": max(1, trainer.rows_per_step // rl.mini_batches),
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": rl.micro_batch_rows,
        # A trajectory gives one row per eviction block, so a step's row count varies: micro-
        # batches by token count (the rows of rl.micro_batch_rows full-length contexts).
        "actor_rollout_ref.actor.use_dynamic_bsz": True,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": rl.micro_batch_rows
        * (prompt_length + response_length),
        "actor_rollout_ref.actor.data_loader_seed": trainer.seed,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": rl.micro_batch_rows,
        "actor_rollout_ref.ref.fsdp_config.param_offload": offload,
        "actor_rollout_ref.ref.fsdp_config.model_dtype": dtype,
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.mode": "async",
        "actor_rollout_ref.rollout.n": cfg.rollout.group_size,
        "actor_rollout_ref.rollout.temperature": sampling.temperature,
        "actor_rollout_ref.rollout.top_p": sampling.top_p,
        "actor_rollout_ref.rollout.top_k": top_k,
        "actor_rollout_ref.rollout.seed": cfg.engine.seed,
        "actor_rollout_ref.rollout.prompt_length": prompt_length,
        "actor_rollout_ref.rollout.response_length": response_length,
        "actor_rollout_ref.rollout.max_model_len": cfg.engine.max_model_len
        or prompt_length + response_length,
        "actor_rollout_ref.rollout.dtype": cfg.engine.dtype,
        "actor_rollout_ref.rollout.gpu_memory_utilization": cfg.engine.gpu_memory_utilization,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": cfg.engine.tensor_parallel_size,
        "actor_rollout_ref.rollout.enforce_eager": cfg.engine.enforce_eager,
        "actor_rollout_ref.rollout.enable_prefix_caching": cfg.engine.enable_prefix_caching,
        "actor_rollout_ref.rollout.calculate_log_probs": True,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": rl.micro_batch_rows,
        "actor_rollout_ref.rollout.agent.default_agent_loop": AGENT_NAME,
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": str(agent_loop_config),
        "actor_rollout_ref.rollout.agent.num_workers": cfg.cluster.agent_workers,
        "actor_rollout_ref.rollout.val_kwargs.temperature": sampling.temperature,
        "actor_rollout_ref.rollout.val_kwargs.top_p": sampling.top_p,
        "actor_rollout_ref.rollout.val_kwargs.top_k": top_k,
        "actor_rollout_ref.rollout.val_kwargs.n": trainer.eval_samples,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": sampling.temperature > 0,
        "reward.reward_model.enable": False,
        "reward.num_workers": 0,
        "data.train_files": str(train_files),
        "data.val_files": str(val_files),
        "data.train_batch_size": trainer.rows_per_step,
        "data.max_prompt_length": prompt_length,
        "data.max_response_length": response_length,
        "data.return_raw_chat": True,
        "data.filter_overlong_prompts": False,
        "data.shuffle": True,
        "data.seed": trainer.seed,
        "trainer.use_v1": True,
        "trainer.v1.trainer_mode": TRAINER_MODE,
        "trainer.total_training_steps": trainer.steps,
        "trainer.total_epochs": trainer.steps,  # every epoch has a step: never the binding limit
        # verl saves/evaluates at every multiple and at the last step; ours: 0 = at the end only
        "trainer.save_freq": trainer.checkpoint_every or trainer.steps,
        "trainer.test_freq": trainer.eval_every or trainer.steps,
        "trainer.val_before_train": False,
        "trainer.max_actor_ckpt_to_keep": trainer.keep_checkpoints,
        "trainer.default_local_dir": str(Path(run_dir) / "checkpoints"),
        "trainer.project_name": trainer.wandb_project or "streamreason",
        "trainer.experiment_name": Path(run_dir).name,
        "trainer.logger": loggers,
        "trainer.nnodes": cfg.cluster.nodes,
        "trainer.n_gpus_per_node": cfg.cluster.gpus_per_node,
    }
    if optim.lora.rank > 0:
        settings["actor_rollout_ref.model.lora_rank"] = optim.lora.rank
        settings["actor_rollout_ref.model.lora_alpha"] = optim.lora.alpha
        settings["actor_rollout_ref.model.target_modules"] = list(optim.lora.target_modules)
        if optim.lora.dropout > 0:
            logger.warning("optim.lora.dropout: verl 0.9.1's FSDP LoRA has no dropout; ignored")
    if optim.freeze_vision:
        logger.warning("optim.freeze_vision: verl 0.9.1 never reads actor.freeze_vision_tower; it trains")
    return [f"{key}={_hydra_value(value)}" for key, value in settings.items()]


def compose_verl_config(
    cfg, *, train_files: str, val_files: str, agent_loop_config: str, run_dir: str
) -> DictConfig:
    """verl's ppo_trainer config: its defaults, :func:`verl_overrides`, then ``cfg.verl`` on top.

    Composition only (Hydra's compose API on verl's installed config folder); nothing starts,
    so it works without a GPU. Interpolations are left unresolved, as ``main_ppo`` expects.

    Args: as :func:`verl_overrides`.

    Returns:
        the composed config, in struct mode.

    Raises:
        ConfigError: a passthrough key that verl's config does not have (naming it as
            ``verl.<key>`` and the closest valid key), a passthrough value that cannot replace the
            default, or a recipe value Hydra rejects.
    """
    overrides = verl_overrides(
        cfg,
        train_files=train_files,
        val_files=val_files,
        agent_loop_config=agent_loop_config,
        run_dir=run_dir,
    )
    composed = _compose(overrides)
    # verl loads the policy with flash-attention 2 and its unpadding unless told otherwise:
    # use them where flash-attn is installed, else PyTorch's SDPA on padded rows.
    attn = _flash_or_sdpa()
    with open_dict(composed):
        composed.actor_rollout_ref.model.override_config.attn_implementation = attn
        composed.actor_rollout_ref.model.use_remove_padding = attn == "flash_attention_2"
        if cfg.engine.skip_mm_profiling:  # a vLLM engine argument verl has no key for
            composed.actor_rollout_ref.rollout.engine_kwargs.vllm.skip_mm_profiling = True
    extra = OmegaConf.to_container(OmegaConf.create(cfg.verl)) if cfg.verl else {}
    if extra:
        _check_passthrough(extra, composed, composed, "")
        try:
            with open_dict(composed):  # free-form dicts ({} in the yaml) may gain keys
                composed.merge_with(extra)
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad value for 'verl.{e.full_key}' (verl passthrough): {e.msg}") from None
    with open_dict(composed):  # after the passthrough: these follow the recipe, not verl.*
        # the trainer's own settings, where verl keeps a trainer mode's (rl/verl_trainer.py)
        composed.trainer.v1[TRAINER_MODE] = {
            "mini_batches": cfg.rl.mini_batches,
            "adv_epsilon": cfg.rl.adv_epsilon,
        }
        # `import verl` imports the trainer in every Ray process (the TaskRunner looks it up by name)
        composed.ray_kwargs.ray_init.runtime_env.env_vars = {
            "VERL_USE_EXTERNAL_MODULES": verl_trainer.__name__
        }
    return composed


def _flash_or_sdpa() -> str:
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def _compose(overrides: list[str]) -> DictConfig:
    # The context manager clears Hydra's global state on exit, so this can run again.
    with hydra.initialize_config_dir(config_dir=str(VERL_CONFIG_DIR), version_base=None):
        try:
            return hydra.compose(config_name="ppo_trainer", overrides=overrides)
        except HydraException as e:
            raise ConfigError(f"verl's config rejects the recipe: {e}") from None


def _check_passthrough(extra: dict, node: DictConfig, root: DictConfig, prefix: str) -> None:
    for key, value in extra.items():
        full = f"{prefix}{key}"
        if key not in node.keys():  # noqa: SIM118 (`in node` is False for keys whose value is ???)
            close = difflib.get_close_matches(full, valid_keys(root, free_form=True), n=1, cutoff=0.5)
            hint = f"; did you mean 'verl.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key 'verl.{full}' (verl passthrough){hint}")
        child = node._get_node(key)
        # Below a null, a scalar or a free-form dict ({} in the yaml) the passthrough value is taken whole.
        if isinstance(value, dict) and isinstance(child, DictConfig) and len(child.keys()) > 0:
            _check_passthrough(value, child, root, f"{full}.")


def _hydra_value(value) -> str:
    """A Python value as a Hydra override value that parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)  # 2e-07, inf: Hydra reads both as floats
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    # Unquoted where that reads back as this string; quoted where it would be another type
    # (true, 1e3), a sweep (a,b) or a parse error (x=y, ~/x).
    for candidate in (text, f"'{text}'", f'"{text}"'):
        try:
            if _PARSER.parse_override(f"k={candidate}").value() == text:
                return candidate
        except HydraException:
            pass
    raise ConfigError(f"{text!r} cannot be written as a Hydra override value")


def _round_up(tokens: int) -> int:
    return -(-tokens // TOKEN_ROUNDING) * TOKEN_ROUNDING
