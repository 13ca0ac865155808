"""What the GRPO and SFT trainers share: a trainable policy, its engine and env pool, a run directory.

:class:`PolicyTrainer` builds the policy from the recipe (:mod:`streamreason.stack`, in
``optim.dtype`` with the Hugging Face module a learner needs), the env pool and the
:class:`~streamreason.rl.run_dir.RunDir`; it makes the :class:`~streamreason.rl.learner.Learner`
and keeps the engine's weights in step with it. The jobs themselves (:class:`~streamreason.rl.trainer.GRPOTrainer`,
:class:`~streamreason.rl.sft.SFTTrainer`) add only what they use: the reward and, with
``rl.kl_coef > 0``, the reference model for GRPO; nothing for SFT. Evaluation alone needs no
learner (:class:`~streamreason.rl.evaluate.Evaluator`).

Under ``torchrun`` every rank builds its own engine and env pool and rolls out its share of the
rows (:func:`~streamreason.rl.learner.shard`); the learner's module is then a copy sharded
with FSDP2, and the engine's full copy takes the new weights after each update.
"""

from __future__ import annotations

import copy

import torch

from streamreason.errors import ConfigError
from streamreason.rl.learner import Learner, world
from streamreason.rl.run_dir import RunDir
from streamreason.stack import build_policy, make_env_pool


class PolicyTrainer:
    """Policy, engine, env pool and run directory of a training job.

    Args:
        cfg: the recipe (:class:`streamreason.config.StreamReasonConfig`).
        run_dir: overrides ``cfg.trainer.run_dir``.
        with_engine: build the generation engine (False: a job that never generates).

    Attributes:
        policy: the :class:`~streamreason.stack.PolicyStack` (model in ``optim.dtype``).
        pool: the env pool (shut down by :meth:`close`).
        run: the run directory.
        rank, world_size: this process in the ``torchrun`` world (0, 1 alone).

    Raises:
        ConfigError: ``trainer.backend`` is not ``local``, or LoRA under several processes.
    """

    def __init__(self, cfg, run_dir: str | None = None, with_engine: bool = True):
        if cfg.trainer.backend != "local":
            raise ConfigError(
                f"trainer.backend={cfg.trainer.backend!r}: the local trainers run 'local' "
                "(verl: rl/verl_backend.py)"
            )
        self.cfg = cfg
        self.rank, self.world_size = world()
        if self.world_size > 1 and cfg.optim.lora.rank > 0:
            raise ConfigError("optim.lora.rank > 0 with several processes is not supported: use one process")
        torch.manual_seed(cfg.trainer.seed + self.rank)
        self.policy = build_policy(cfg, seed=cfg.trainer.seed + self.rank, dtype=cfg.optim.dtype, need_model=True,
                                   with_engine=with_engine)  # fmt: skip
        # under FSDP the learner shards its own copy; the engine keeps a full one
        self._trained = copy.deepcopy(self.policy.model) if self.world_size > 1 else self.policy.model
        self.pool = make_env_pool(cfg)
        self.run = RunDir(run_dir or cfg.trainer.run_dir)

    def learner(self, total_steps: int, lr: float | None = None, ref_model=None) -> Learner:
        """The learner of ``total_steps`` optimizer steps (``lr`` overrides ``optim.lr``).

        In one process an engine that shares the policy module (the transformers engine)
        generates with the learner's module, LoRA adapters included, and its log-probs are the
        learner's own (``Learner(engine_is_policy=True)``)."""
        optim = copy.deepcopy(self.cfg.optim)
        if lr is not None:
            optim.lr = lr
        engine = self.policy.engine
        engine_is_policy = engine is not None and self.world_size == 1 and engine.shares_policy
        learner = Learner(self._trained, optim, self.cfg.rl, total_steps, self.policy.processor.tokenizer.pad_token_id,
                          temperature=self.cfg.rollout.sampling.temperature, ref_model=ref_model,
                          engine_is_policy=engine_is_policy)  # fmt: skip
        if engine_is_policy:
            engine.set_policy(learner.model)  # LoRA wraps the model: generate with the adapters
        return learner

    def sync_engine(self, learner: Learner) -> None:
        """Bring the engine to the learner's weights: pushed into a running engine that takes
        weight updates (vLLM), or loaded into the engine's full copy under FSDP. Nothing to do
        when the engine generates with the learner's own module."""
        engine = self.policy.engine
        if engine is None:
            return
        if engine.updates_weights:
            engine.update_weights(learner.policy_weights())
        elif self.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(learner.model, options=StateDictOptions(full_state_dict=True))
            engine.model.load_state_dict(sd)

    def close(self) -> None:
        """Shut the env pool's actors down."""
        self.pool.shutdown()
