"""The GRPO trainer (``streamreason train``, ``trainer.backend=local``): one machine, CPU or GPUs.

The GRPO job of the three local entry points (GRPO here, SFT in :mod:`streamreason.rl.sft`,
evaluation in :mod:`streamreason.rl.evaluate`), each built from the recipe by
:mod:`streamreason.stack` and holding only what it uses. One GRPO step, top to bottom
(:meth:`GRPOTrainer.train`):
rollout (env pool + engine) → rewards → group advantages → packed rows → updates → new
weights to the engine → metrics → eval every ``eval_every`` → checkpoint every
``checkpoint_every`` steps and on SIGTERM; the run directory follows
:class:`~streamreason.rl.run_dir.RunDir` (``status.json`` says running, stopped, failed or
finished). ``--resume`` restores model, optimizer, scheduler,
RNG and data position from the newest complete checkpoint and continues exactly: the
transformers engine samples from torch's generators, the vLLM engine with a per-request seed
drawn from torch's CPU generator (``rollout/vllm_engine.py``), both in the checkpoint. The
learning-rate schedule is set from the step index at each step (``Learner.schedule_to``), so a
step with nothing to train on does not shift it.

Under ``torchrun`` every rank rolls out its own share of the step's rows (a group never spans
ranks) and the learner is sharded with FSDP2; the engine then holds a full copy of the
weights, refreshed after each update.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from streamreason.errors import ConfigError
from streamreason.rl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from streamreason.rl.evaluate import evaluate, summarize, trajectory_stats
from streamreason.rl.grpo import group_advantages, informative_groups
from streamreason.rl.learner import Learner, barrier, gather, shard
from streamreason.rl.metrics import MetricsLogger
from streamreason.rl.rows import build_rows, noop_row
from streamreason.rl.training import PolicyTrainer
from streamreason.rollout.loop import run_rollouts
from streamreason.stack import load_rows, make_reward

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """The run.

    Attributes:
        backend: ``local`` (this trainer) or ``verl`` (verl's V1 trainer on a Ray cluster,
            ``rl/verl_backend.py``).
        run_dir: where metrics, checkpoints, evals and the final model go.
        steps: GRPO steps (one rollout batch and its updates each).
        rows_per_step: dataset rows per step (× ``rollout.group_size`` trajectories).
        eval_every: steps between evals (0 = only at the end).
        eval_samples: trajectories per eval row.
        checkpoint_every: steps between checkpoints (0 = only at the end and on SIGTERM).
        keep_checkpoints: complete checkpoints kept.
        seed: seeds data order, sampling and updates.
        tensorboard: also write TensorBoard scalars.
        wandb_project: log to W&B when set.
        progress: progress bars inside each step (rollout turns and turns/s, update rows and
            training tokens/s) under the steps' bar; False: the steps' bar only.
    """

    backend: str = "local"
    run_dir: str = "runs/demo/grpo"
    steps: int = 100
    rows_per_step: int = 4
    eval_every: int = 25
    eval_samples: int = 4
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    seed: int = 0
    tensorboard: bool = True
    wandb_project: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.backend not in ("local", "verl"):
            raise ConfigError(f"trainer.backend must be 'local' or 'verl', got {self.backend!r}")


class RowSampler:
    """Rows in a seeded random order, epoch after epoch; its position is checkpointed."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.index = n, seed, 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
            take = min(k - len(out), self.n - self.index)
            out.extend(self._order()[self.index : self.index + take].tolist())
            self.index += take
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]


class GRPOTrainer(PolicyTrainer):
    """GRPO on the streaming env (``streamreason train``, ``trainer.backend=local``).

    Holds, beyond :class:`~streamreason.rl.training.PolicyTrainer`'s policy, engine and env
    pool, the composite reward and, only when ``rl.kl_coef > 0``, a frozen reference model.

    Args:
        cfg: the recipe (:class:`streamreason.config.StreamReasonConfig`).
        run_dir: overrides ``cfg.trainer.run_dir``.
    """

    def __init__(self, cfg, run_dir: str | None = None):
        super().__init__(cfg, run_dir)
        model = self.policy.model
        self.ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.rl.kl_coef > 0 else None
        self.reward = make_reward(cfg)
        self.stop_requested = False

    def _on_sigterm(self, *_):
        self.stop_requested = True

    def train(self, resume: bool = False) -> dict[str, float]:
        """Run ``trainer.steps`` GRPO steps; returns the last eval's means.

        Raises:
            ConfigError: the run directory holds a run and ``resume`` is False, or a data file
                is missing or empty.
        """
        self._started = False
        try:
            return self._train(resume)
        except BaseException as e:
            if self.rank == 0 and self._started:  # SIGKILL leaves "running": --resume continues
                self.run.fail(f"{type(e).__name__}: {e}")
            raise
        finally:
            self.close()

    def _train(self, resume: bool) -> dict[str, float]:
        cfg, tc = self.cfg, self.cfg.trainer
        train_rows, bad_train = load_rows(cfg.data.train)
        eval_rows = load_rows(cfg.data.eval, cfg.data.eval_rows)[0] if cfg.data.eval else []  # null: no eval
        updates_per_step = cfg.rl.ppo_epochs * cfg.rl.mini_batches
        learner = self.learner(tc.steps * updates_per_step, ref_model=self.ref_model)
        sampler = RowSampler(len(train_rows), tc.seed)
        start = 0
        ckpt = self.run.latest_checkpoint() if resume else None
        if ckpt is None and self.run.holds_run():
            raise ConfigError(
                f"{self.run.path} already holds a run: pass --resume, or set another trainer.run_dir"
            )
        barrier()  # every rank has looked before rank 0 writes the status
        logger = MetricsLogger(
            self.run.path, tensorboard=tc.tensorboard, wandb_project=tc.wandb_project, rank=self.rank
        )
        if ckpt is not None:
            start, state = load_checkpoint(ckpt)
            learner.load_state_dict(state)
            sampler.load(state["trainer"]["sampler"])
            set_rng_state(state["trainer"]["rng"][self.rank])
            self.sync_engine(learner)
            logger.truncate_after(start)
        if self.rank == 0:
            self.run.start(cfg, "local", tc.steps, resume=ckpt is not None)
        self._started = True
        signal.signal(signal.SIGTERM, self._on_sigterm)
        from tqdm.auto import tqdm

        bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="grpo", disable=self.rank != 0)
        last_eval: dict[str, float] = {}
        stopped = False
        for step in bar:
            t0 = time.perf_counter()
            batch = [train_rows[i] for i in sampler.take(tc.rows_per_step)]
            learner.schedule_to(step * updates_per_step)  # a step that trains on nothing still moves the LR
            metrics = self._grpo_step(learner, shard(batch))
            metrics["rows_malformed"] = float(bad_train)
            metrics["step_time_s"] = time.perf_counter() - t0
            logger.log(step + 1, metrics)
            bar.set_postfix(reward=f"{metrics.get('reward', math.nan):.3f}")
            done = step + 1 == tc.steps
            if eval_rows and (done or (tc.eval_every and (step + 1) % tc.eval_every == 0)):
                last_eval = self._eval_and_log(eval_rows, logger, step + 1)
            stop = self.stop_requested  # read once: a SIGTERM from here on stops after the next step
            if done or stop or (tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0):
                self._checkpoint(learner, sampler, step + 1)
            if self.rank == 0:
                self.run.update(step + 1)
            if stop:
                stopped = True
                break
        logger.close()
        if stopped:
            if self.rank == 0:
                self.run.stop()
        else:
            learner.export(self.run.final, self.policy.processor)
            if self.rank == 0:
                self.run.finish()
        return last_eval

    def _grpo_step(self, learner: Learner, rows) -> dict[str, float]:
        """Rollout → rewards → advantages → rows → update → engine weights; returns metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        show = cfg.trainer.progress and self.rank == 0
        trajs, failures = run_rollouts(rows, pool=self.pool, engine=self.policy.engine,
                                       encoder=self.policy.encoder, cfg=cfg.rollout, progress=show)  # fmt: skip
        rollout_s = time.perf_counter() - t0
        results = [self.reward(t.episode()) for t in trajs]  # rewards.on_error=raise: fails fast here
        for t, r in zip(trajs, results):
            if not r.ok:
                log.warning("trajectory %d of row %s skipped: %s", t.group_index, t.row.id, r.error)
        scored = [(t, r) for t, r in zip(trajs, results) if r.ok]
        stats = [trajectory_stats(t, r) for t, r in scored]
        gen_tokens = sum(len(turn.response_ids) for t in trajs for turn in t.turns)
        metrics: dict[str, float] = {}
        if scored:
            rewards = torch.tensor([r.total for _, r in scored], dtype=torch.float32)
            groups = [t.row.id for t, _ in scored]
            keep = (
                informative_groups(rewards, groups)
                if cfg.rl.filter_zero_variance_groups
                else np.ones(len(scored), bool)
            )
            adv = group_advantages(rewards, groups, cfg.rl)
            kept = [i for i in range(len(scored)) if keep[i]]
            train = build_rows([scored[i][0] for i in kept], [float(adv[i]) for i in kept])
            metrics["groups_kept_frac"] = float(np.mean(keep))
            metrics["advantage_abs"] = float(adv.abs().mean())
        else:
            train = []
        if not train and trajs and self.world_size > 1:  # take part in the collectives with a no-op row
            train = [noop_row(r) for r in build_rows(trajs[:1])]
        t1 = time.perf_counter()
        if sum(gather([sum(r.num_loss_tokens for r in train)])) > 0:
            ref = learner.logprobs(train, reference=True) if self.ref_model is not None else None
            metrics.update(learner.grpo_update(train, ref, progress=cfg.trainer.progress and self.rank == 0))
            self.sync_engine(learner)
        update_s = time.perf_counter() - t1
        all_stats = gather(stats)
        mean, _ = summarize({str(i): [s] for i, s in enumerate(all_stats)})
        for k, v in mean.items():
            metrics[k] = v
        for k in [k for k in mean if k == "reward" or k.startswith("reward/")]:  # spread of each component
            metrics[f"{k}_std"] = float(np.std([s[k] for s in all_stats if k in s]))
        train_tokens = sum(len(r) for r in train)
        metrics.update(
            rows_failed=float(sum(gather([len(failures)]))),
            env_restarts=float(sum(gather([self.pool.restarts]))),
            reward_failed=float(sum(gather([len(trajs) - len(scored)]))),
            rollout_s=rollout_s, update_s=update_s,
            rollout_tokens_per_s=gen_tokens / max(rollout_s, 1e-9),
            train_tokens_per_s=train_tokens / max(update_s, 1e-9),
        )  # fmt: skip
        return metrics

    def _eval_and_log(self, eval_rows, logger: MetricsLogger, step: int) -> dict[str, float]:
        res = evaluate(eval_rows, pool=self.pool, engine=self.policy.engine, encoder=self.policy.encoder,
                       cfg=self.cfg.rollout, reward=self.reward, samples=self.cfg.trainer.eval_samples,
                       progress=self.rank == 0)  # fmt: skip
        logger.log(step, {**res.mean, **{f"{k}_stderr": v for k, v in res.stderr.items()}}, prefix="eval/")
        return res.mean

    def _checkpoint(self, learner: Learner, sampler: RowSampler, step: int) -> None:
        state = learner.state_dict()
        rngs = gather([rng_state()])
        state["trainer"] = {"sampler": sampler.state(), "rng": rngs, "step": step}
        if self.rank == 0:
            save_checkpoint(self.run.path, step, state, keep=self.cfg.trainer.keep_checkpoints)
        if self.world_size > 1:
            dist.barrier()
