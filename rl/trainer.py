"""The local trainer (``trainer.backend=local``): GRPO and SFT on one machine, CPU or GPU.

One GRPO step, top to bottom (:meth:`LocalTrainer.train`):
rollout (env pool + engine) → rewards → group advantages → packed rows → updates → new
weights to the engine → metrics → eval every ``eval_every`` → checkpoint every
``checkpoint_every`` steps and on SIGTERM. ``--resume`` restores model, optimizer, scheduler,
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
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from streamreason.errors import ConfigError
from streamreason.rl.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from streamreason.rl.evaluate import EvalResult, evaluate, summarize, trajectory_stats
from streamreason.rl.grpo import group_advantages, informative_groups
from streamreason.rl.learner import Learner, world
from streamreason.rl.metrics import MetricsLogger
from streamreason.rl.rows import build_rows
from streamreason.rl.sft import sft_rows
from streamreason.stack import load_rows

logger = logging.getLogger(__name__)


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


class LocalTrainer:
    """GRPO (:meth:`train`), SFT (:meth:`sft`) and evaluation (:meth:`evaluate`) of one recipe.

    Args:
        cfg: the recipe (:class:`streamreason.config.StreamReasonConfig`).
        run_dir: overrides ``cfg.trainer.run_dir``.
    """

    def __init__(self, cfg, run_dir: str | None = None):
        from streamreason.stack import build_policy, make_env_pool, make_reward

        if cfg.trainer.backend != "local":
            raise ConfigError(
                f"trainer.backend={cfg.trainer.backend!r}: LocalTrainer runs 'local' (verl: rl/verl_backend.py)"
            )
        self.cfg = cfg
        self.rank, self.world_size = world()
        self.run_dir = Path(run_dir or cfg.trainer.run_dir)
        torch.manual_seed(cfg.trainer.seed + self.rank)
        policy = build_policy(cfg, seed=cfg.trainer.seed + self.rank, dtype=cfg.optim.dtype, need_model=True)
        self.model, self.processor, self.encoder, self.engine = (
            policy.model,
            policy.processor,
            policy.encoder,
            policy.engine,
        )
        if self.world_size > 1 and cfg.optim.lora.rank > 0:
            raise ConfigError("optim.lora.rank > 0 with several processes is not supported: use one process")
        self.policy_model = copy.deepcopy(self.model) if self.world_size > 1 else self.model
        self.ref_model = (
            copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.rl.kl_coef > 0 else None
        )
        self.pool = make_env_pool(cfg)
        self.reward = make_reward(cfg)
        self.stop_requested = False

    # -- shared pieces ---------------------------------------------------------------------
    def _learner(self, total_steps: int, lr: float | None = None) -> Learner:
        optim = copy.deepcopy(self.cfg.optim)
        if lr is not None:
            optim.lr = lr
        pad = self.processor.tokenizer.pad_token_id
        # one process, transformers engine: it generates with the learner's module, in its dtype
        engine_is_policy = self.world_size == 1 and hasattr(self.engine, "model")
        learner = Learner(self.policy_model, optim, self.cfg.rl, total_steps, pad,
                          temperature=self.cfg.rollout.sampling.temperature, ref_model=self.ref_model,
                          engine_is_policy=engine_is_policy)  # fmt: skip
        if engine_is_policy:
            self.engine.model = learner.model  # LoRA wraps the model: generate with the adapters
        return learner

    def _sync_engine(self, learner: Learner) -> None:
        if hasattr(self.engine, "update_weights"):  # vLLM: push the new weights into the running engine
            self.engine.update_weights(learner.policy_weights())
        elif self.world_size > 1:  # the engine's full copy takes the sharded policy's new weights
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(learner.model, options=StateDictOptions(full_state_dict=True))
            self.engine.model.load_state_dict(sd)

    def _shard(self, rows: list) -> list:
        return rows[self.rank :: self.world_size]

    def _gather(self, items: list) -> list:
        if self.world_size == 1:
            return items
        out: list = [None] * self.world_size
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def evaluate(self, rows, samples: int) -> EvalResult:
        """Sampled eval on ``rows`` (each rank its share; statistics gathered on all ranks)."""
        res = evaluate(self._shard(rows), pool=self.pool, engine=self.engine, encoder=self.encoder,
                       cfg=self.cfg.rollout, reward=self.reward, samples=samples, progress=self.rank == 0)  # fmt: skip
        return EvalResult.merge(self._gather([res]))

    def _on_sigterm(self, *_):
        self.stop_requested = True

    # -- GRPO ------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, float]:
        """Run ``trainer.steps`` GRPO steps; returns the last eval's means."""
        cfg, tc = self.cfg, self.cfg.trainer
        train_rows, bad_train = load_rows(cfg.data.train)
        eval_rows, _ = load_rows(cfg.data.eval, cfg.data.eval_rows)
        updates_per_step = cfg.rl.ppo_epochs * cfg.rl.mini_batches
        learner = self._learner(tc.steps * updates_per_step)
        sampler = RowSampler(len(train_rows), tc.seed)
        start = 0
        logger = MetricsLogger(
            self.run_dir, tensorboard=tc.tensorboard, wandb_project=tc.wandb_project, rank=self.rank
        )
        if resume and (ckpt := latest_checkpoint(self.run_dir)) is not None:
            start, state = load_checkpoint(ckpt)
            learner.load_state_dict(state)
            sampler.load(state["trainer"]["sampler"])
            set_rng_state(state["trainer"]["rng"][self.rank])
            self._sync_engine(learner)
            logger.truncate_after(start)
        elif (self.run_dir / "metrics.jsonl").exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run: pass --resume, or set another trainer.run_dir"
            )
        elif self.rank == 0:
            (self.run_dir / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
            from streamreason.schema import to_yaml

            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        signal.signal(signal.SIGTERM, self._on_sigterm)
        from tqdm.auto import tqdm

        bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="grpo", disable=self.rank != 0)
        last_eval: dict[str, float] = {}
        for step in bar:
            t0 = time.perf_counter()
            batch = [train_rows[i] for i in sampler.take(tc.rows_per_step)]
            learner.schedule_to(step * updates_per_step)  # a step that trains on nothing still moves the LR
            metrics = self._grpo_step(learner, self._shard(batch))
            metrics["rows_malformed"] = float(bad_train)
            metrics["step_time_s"] = time.perf_counter() - t0
            logger.log(step + 1, metrics)
            bar.set_postfix(reward=f"{metrics.get('reward', math.nan):.3f}")
            done = step + 1 == tc.steps
            if done or (tc.eval_every and (step + 1) % tc.eval_every == 0):
                last_eval = self._eval_and_log(eval_rows, logger, step + 1)
            if done or self.stop_requested or (tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0):
                self._checkpoint(learner, sampler, step + 1)
            if self.stop_requested:
                break
        logger.close()
        if not self.stop_requested:
            learner.export(self.run_dir / "final", self.processor)
        self.pool.shutdown()
        return last_eval

    def _grpo_step(self, learner: Learner, rows) -> dict[str, float]:
        """Rollout → rewards → advantages → rows → update → engine weights; returns metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        trajs, failures = self._rollout(rows)
        rollout_s = time.perf_counter() - t0
        results = [self.reward(t.episode()) for t in trajs]  # rewards.on_error=raise: fails fast here
        for t, r in zip(trajs, results):
            if not r.ok:
                logger.warning("trajectory %d of row %s skipped: %s", t.group_index, t.row.id, r.error)
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
            train = build_rows(trajs[:1])
            for r in train:
                r.loss_mask = np.zeros_like(r.loss_mask)
        t1 = time.perf_counter()
        if sum(self._gather([sum(r.num_loss_tokens for r in train)])) > 0:
            ref = learner.logprobs(train, reference=True) if self.ref_model is not None else None
            metrics.update(learner.grpo_update(train, ref))
            self._sync_engine(learner)
        update_s = time.perf_counter() - t1
        all_stats = self._gather(stats)
        mean, _ = summarize({str(i): [s] for i, s in enumerate(all_stats)})
        for k, v in mean.items():
            metrics[k] = v
        for k in [k for k in mean if k == "reward" or k.startswith("reward/")]:  # spread of each component
            metrics[f"{k}_std"] = float(np.std([s[k] for s in all_stats if k in s]))
        train_tokens = sum(len(r) for r in train)
        metrics.update(
            rows_failed=float(sum(self._gather([len(failures)]))),
            env_restarts=float(sum(self._gather([self.pool.restarts]))),
            reward_failed=float(sum(self._gather([len(trajs) - len(scored)]))),
            rollout_s=rollout_s, update_s=update_s,
            rollout_tokens_per_s=gen_tokens / max(rollout_s, 1e-9),
            train_tokens_per_s=train_tokens / max(update_s, 1e-9),
        )  # fmt: skip
        return metrics

    def _rollout(self, rows):
        from streamreason.rollout.loop import run_rollouts

        return run_rollouts(
            rows, pool=self.pool, engine=self.engine, encoder=self.encoder, cfg=self.cfg.rollout
        )

    def _eval_and_log(self, eval_rows, logger: MetricsLogger, step: int) -> dict[str, float]:
        res = self.evaluate(eval_rows, self.cfg.trainer.eval_samples)
        logger.log(step, {**res.mean, **{f"{k}_stderr": v for k, v in res.stderr.items()}}, prefix="eval/")
        return res.mean

    def _checkpoint(self, learner: Learner, sampler: RowSampler, step: int) -> None:
        state = learner.state_dict()
        rngs = self._gather([rng_state()])
        state["trainer"] = {"sampler": sampler.state(), "rng": rngs, "step": step}
        if self.rank == 0:
            save_checkpoint(self.run_dir, step, state, keep=self.cfg.trainer.keep_checkpoints)
        if self.world_size > 1:
            dist.barrier()

    # -- SFT -------------------------------------------------------------------------------
    def sft(self) -> dict[str, float]:
        """SFT warm-start on the gold trajectories of ``data.train``; exports ``run_dir/final``."""
        cfg, sc = self.cfg, self.cfg.sft
        if (self.run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"{self.run_dir} already holds a run: set another trainer.run_dir")
        rows, _ = load_rows(cfg.data.train)
        rows = self._shard(rows)
        train, failures = sft_rows(rows, pool=self.pool, encoder=self.encoder, cfg=cfg.rollout)
        by_row: dict[int, list] = {}
        for r in train:
            by_row.setdefault(r.traj_index, []).append(r)
        groups = list(by_row.values())
        steps_per_epoch = max(1, math.ceil(len(groups) / sc.rows_per_step))
        learner = self._learner(sc.epochs * steps_per_epoch, lr=sc.lr)
        logger = MetricsLogger(self.run_dir, tensorboard=self.cfg.trainer.tensorboard, rank=self.rank)
        from tqdm.auto import tqdm

        rng = np.random.default_rng(self.cfg.trainer.seed)
        step = 0
        bar = tqdm(total=sc.epochs * steps_per_epoch, desc="sft", disable=self.rank != 0)
        metrics: dict[str, float] = {}
        for _ in range(sc.epochs):
            order = rng.permutation(len(groups))
            for i in range(0, len(order), sc.rows_per_step):
                batch = [r for g in order[i : i + sc.rows_per_step] for r in groups[g]]
                metrics = learner.sft_update(batch, balance=sc.balance_decisions, focal_gamma=sc.focal_gamma)
                step += 1
                logger.log(step, {**metrics, "rows_failed": float(len(failures))}, prefix="sft/")
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", dec_acc=f"{metrics['decision_acc']:.2f}")
        bar.close()
        logger.close()
        learner.export(self.run_dir / "final", self.processor)
        self.pool.shutdown()
        return metrics


def write_eval(path: Path, name: str, res: EvalResult) -> None:
    """Store an eval (means, standard errors, signed timing errors) as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    per_row = {
        rid: float(np.mean([x["reward"] for x in xs if "reward" in x] or [math.nan]))
        for rid, xs in res.per_row.items()
    }
    path.write_text(json.dumps({"name": name, "mean": res.mean, "stderr": res.stderr, "row_reward": per_row,
                                "timing_errors_s": res.timing_errors_s, "trajectories": res.trajectories,
                                "rows_failed": res.rows_failed}, indent=1))  # fmt: skip
