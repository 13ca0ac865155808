"""verl 0.9.1's V1 sync trainer with this project's GRPO advantage and mini-batch count.

:class:`StreamPPOTrainer` is verl's ``PPOTrainerSync`` (``verl/trainer/ppo/v1/trainer_sync.py``)
with two changes, so that the verl backend trains what the local trainer trains
(``rl/learner.py``, ``Learner.grpo_update``; ``rl/trainer.py``):

* **Advantages**: exactly 0 in a group whose rewards are all equal. verl's V1 trainer takes each
  trajectory's last output, computes GRPO over those, and copies the advantage to the
  trajectory's other outputs (``verl/trainer/ppo/v1/utils.py``,
  ``compute_advantage_for_multi_trajectories``), but only when ``algorithm.adv_estimator`` is
  ``grpo``: any other estimator, a registered one (``core_algos.register_adv_est``) included,
  goes to ``compute_advantage`` with every row of every trajectory as a sample, so a custom
  estimator cannot see which rows form a trajectory. So the estimator stays ``grpo`` and, during
  this trainer's advantage step only, verl's ``core_algos.compute_grpo_outcome_advantage`` (which
  ``verl/trainer/ppo/ray_trainer.py``, ``compute_advantage``, calls for ``grpo``) is
  :func:`~streamreason.rl.grpo.grpo_outcome_advantage`, the local trainer's function: verl's
  numbers, 0 for equal-reward groups, and the recipe's ``rl.adv_epsilon`` (verl's call passes
  none, so 1e-6).
* **Mini-batches**: ``ppo_epochs × rl.mini_batches`` optimizer steps per rollout whatever the
  rows per trajectory. verl cuts a step's rows into mini-batches of ``ppo_mini_batch_size ·
  rollout.n`` rows (``PPOTrainer._update_actor``; ``verl/workers/engine_workers.py``,
  ``TrainingWorker.train_mini_batch``, one optimizer step per mini-batch), which counts
  prompts only when a trajectory is one row; a ThinkStream trajectory (120 chunks, W = 20,
  B = 1) is ~101 rows. Here, once the step's rows R are known (``_balance_batch``), the
  mini-batch is set to :func:`mini_batch_rows` rows and the batch padded with verl's no-op
  rows (``upsample_batch_to_divisible_size``) to exactly ``rl.mini_batches`` of them. Each
  mini-batch's ``global_batch_size`` (the ``seq-mean-*`` denominator) is its row count, as in verl.

The trainer's settings come from ``trainer.v1.streamreason`` (``mini_batches``, ``adv_epsilon``),
verl's place for a trainer mode's own settings (``PPOTrainer.__init__`` reads
``trainer.v1[trainer_mode]``), written by :func:`~streamreason.rl.verl_config.compose_verl_config`.
verl finds the class by ``trainer.v1.trainer_mode`` in the TaskRunner, a Ray actor: the config
sets ``VERL_USE_EXTERNAL_MODULES`` to this module in Ray's runtime environment, and ``import
verl`` imports it in every Ray process (``verl/__init__.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager

from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from streamreason.rl.grpo import grpo_outcome_advantage

TRAINER_MODE = "streamreason"


def mini_batch_rows(rows: int, mini_batches: int, unit: int) -> int:
    """Rows per mini-batch such that ``rows``, padded up to ``mini_batches`` times it, make exactly
    ``mini_batches`` mini-batches.

    ``unit · ceil(rows / (mini_batches · unit))``: the smallest multiple of ``unit`` with
    ``mini_batches`` of them holding all rows (at most ``mini_batches · unit − 1`` padding rows).

    Args:
        rows: the step's training rows (all trajectories' outputs), >= 0.
        mini_batches: ``rl.mini_batches``, >= 1.
        unit: what a mini-batch's row count must be a multiple of: ``lcm(dp size, rollout.n)``
            (each data-parallel rank gets an equal share, and verl's ``ppo_mini_batch_size`` is
            that count divided by ``rollout.n``).

    Returns:
        rows per mini-batch, a positive multiple of ``unit``.
    """
    return unit * max(1, math.ceil(rows / (mini_batches * unit)))


@contextmanager
def grpo_advantage(epsilon: float) -> Iterator[None]:
    """While active, verl's ``core_algos.compute_grpo_outcome_advantage`` is
    :func:`~streamreason.rl.grpo.grpo_outcome_advantage` with ``epsilon`` (verl's callers look it
    up on the module at each call)."""
    verl_fn = core_algos.compute_grpo_outcome_advantage
    core_algos.compute_grpo_outcome_advantage = functools.partial(grpo_outcome_advantage, epsilon=epsilon)
    try:
        yield
    finally:
        core_algos.compute_grpo_outcome_advantage = verl_fn


@register_trainer(TRAINER_MODE)
class StreamPPOTrainer(PPOTrainerSync):
    """verl's sync V1 trainer with exact-zero GRPO advantages and ``rl.mini_batches`` optimizer
    steps per epoch (see the module docstring). Selected by ``trainer.v1.trainer_mode=streamreason``."""

    def _build_replay_buffer(self):
        # verl picks its sync code paths by the mode's name (replay buffer, refill, weight sync):
        # this trainer is the sync trainer under another name.
        self.trainer_mode = "sync"
        return super()._build_replay_buffer()

    @property
    def _settings(self):
        return self.config.trainer.v1[TRAINER_MODE]

    def _balance_batch(self, batch, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        self._step_rows = len(batch)
        return super()._balance_batch(
            batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch
        )

    def _get_required_batch_multiple(self, dp_size: int) -> int:
        """Sets this step's ``actor.ppo_mini_batch_size`` (``_update_actor`` reads it) to
        :func:`mini_batch_rows` / ``rollout.n`` and returns ``mini_batches`` times the mini-batch
        rows: verl pads the batch up to it, so it splits into exactly ``mini_batches``."""
        n = self.config.actor_rollout_ref.rollout.n
        mini_batches = self._settings.mini_batches
        rows = mini_batch_rows(self._step_rows, mini_batches, math.lcm(dp_size, n))
        self.config.actor_rollout_ref.actor.ppo_mini_batch_size = rows // n
        return math.lcm(super()._get_required_batch_multiple(dp_size), mini_batches * rows)

    def _compute_advantage(self, batch, metrics):
        with grpo_advantage(self._settings.adv_epsilon):
            return super()._compute_advantage(batch, metrics)
