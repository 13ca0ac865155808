"""GRPO math: group-normalised advantages and the clipped policy loss, both verl's.

Every formula here is verl 0.9.1's (``verl.trainer.ppo.core_algos``): the advantage is
``compute_grpo_outcome_advantage``, the policy loss any registered ``get_policy_loss_fn`` (``vanilla`` =
PPO clip with separate low/high ratios, i.e. DAPO clip-higher, plus dual-clip), aggregation is
``agg_loss`` and the reference KL is ``kl_penalty``. This module is the glue that lets the local
trainer call them on plain tensors, exactly as verl's own actor loss (``verl.workers.utils.losses.ppo_loss``)
does, so the local and verl backends optimise the same objective.

Example:
    >>> import torch
    >>> cfg = GRPOConfig(clip_ratio_high=0.28)
    >>> group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), ["a", "a", "b", "b"], cfg)
    tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from verl.trainer.ppo.core_algos import (
    POLICY_LOSS_REGISTRY,
    agg_loss,
    compute_grpo_outcome_advantage,
    get_policy_loss_fn,
    kl_penalty,
)
from verl.workers.config import ActorConfig, PolicyLossConfig

from streamreason.errors import ConfigError

# The names verl 0.9.1's agg_loss and kl_penalty accept (it keeps no list of them); a "+" suffix on
# a KL estimator (e.g. "k3+") keeps its value but takes the k2 gradient (straight-through).
LOSS_AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
KL_ESTIMATORS = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")


@dataclass
class GRPOConfig:
    """GRPO advantage and loss settings (the ``rl`` section's GRPO keys).

    Attributes:
        norm_adv_by_std: A = (r − mean) / (std + adv_epsilon) per group (GRPO); False: A = r − mean
            (Dr.GRPO, arXiv 2503.20783).
        adv_epsilon: added to the group std before dividing.
        policy_loss: a policy loss registered in verl (``vanilla``, ``gspo``, ``cispo``, ...).
        clip_ratio_low: ε_low, the ratio is clipped below at 1 − ε_low.
        clip_ratio_high: ε_high, the ratio is clipped above at 1 + ε_high (DAPO clip-higher: 0.28).
        clip_ratio_c: dual-clip bound c > 1: for A < 0 the loss is at most −c·A (arXiv 1912.09729).
        loss_agg_mode: how token losses become a scalar, one of :data:`LOSS_AGG_MODES` (verl ``agg_loss``).
        kl_coef: β of the KL-to-reference term; 0 needs no reference model.
        kl_estimator: verl ``kl_penalty`` estimator, one of :data:`KL_ESTIMATORS`, optionally with "+".
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        filter_zero_variance_groups: drop rows of groups whose rewards are all equal before the
            update (DAPO dynamic sampling; see :func:`informative_groups`).
        ppo_epochs: passes over the rollout batch per training step.
        mini_batches: optimizer steps per epoch; the rows are split into this many mini-batches.
        micro_batch_rows: rows per forward/backward; gradients accumulate within a mini-batch.

    Raises:
        ConfigError: a value out of range or a name verl does not know, naming the key as ``rl.<field>``.
    """

    norm_adv_by_std: bool = True
    adv_epsilon: float = 1e-6
    policy_loss: str = "vanilla"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: str = "low_var_kl"
    entropy_coef: float = 0.0
    filter_zero_variance_groups: bool = True
    ppo_epochs: int = 1
    mini_batches: int = 1
    micro_batch_rows: int = 8

    def __post_init__(self):
        checks = [
            ("adv_epsilon", self.adv_epsilon > 0, "must be > 0"),
            (
                "policy_loss",
                self.policy_loss in POLICY_LOSS_REGISTRY,
                f"must be one of {sorted(POLICY_LOSS_REGISTRY)}",
            ),
            ("clip_ratio_low", 0 < self.clip_ratio_low < 1, "must be in (0, 1)"),
            ("clip_ratio_high", self.clip_ratio_high > 0, "must be > 0"),
            ("clip_ratio_c", self.clip_ratio_c > 1, "must be > 1"),
            ("loss_agg_mode", self.loss_agg_mode in LOSS_AGG_MODES, f"must be one of {list(LOSS_AGG_MODES)}"),
            ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
            (
                "kl_estimator",
                self.kl_estimator.removesuffix("+") in KL_ESTIMATORS,
                f"must be one of {list(KL_ESTIMATORS)}, optionally with a '+' suffix",
            ),
            ("entropy_coef", self.entropy_coef >= 0, "must be >= 0"),
            ("ppo_epochs", self.ppo_epochs >= 1, "must be >= 1"),
            ("mini_batches", self.mini_batches >= 1, "must be >= 1"),
            ("micro_batch_rows", self.micro_batch_rows >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"rl.{name} {rule}, got {getattr(self, name)!r}")


def informative_groups(rewards: torch.Tensor | Sequence[float], group_ids: Sequence[Hashable]) -> np.ndarray:
    """Which trajectories belong to a group whose rewards are not all equal.

    A group whose rewards are all equal (a singleton included) has zero advantage, hence no
    policy gradient; DAPO's dynamic sampling drops such groups (arXiv 2503.14476, eq. 11).
    Failed trajectories (NaN reward) must be dropped by the caller before this is called: one
    NaN would make its group's mean, and so every advantage in it, NaN.

    Args:
        rewards: float ``[n]``, one scalar reward per trajectory.
        group_ids: ``[n]`` hashable ids; equal ids form one group (the G samples of one prompt).

    Returns:
        bool ``[n]``: True where the trajectory's group has at least two distinct rewards.

    Raises:
        ValueError: lengths differ, or a reward is NaN.
    """
    values = torch.as_tensor(rewards, dtype=torch.float32).tolist()
    if len(values) != len(group_ids):
        raise ValueError(f"{len(values)} rewards but {len(group_ids)} group ids")
    if any(v != v for v in values):
        raise ValueError("NaN reward: drop failed trajectories before computing advantages")
    distinct = defaultdict(set)
    for g, v in zip(group_ids, values):
        distinct[g].add(v)
    return np.array([len(distinct[g]) > 1 for g in group_ids], dtype=bool)


def group_advantages(
    rewards: torch.Tensor | Sequence[float], group_ids: Sequence[Hashable], cfg: GRPOConfig
) -> torch.Tensor:
    """One GRPO advantage per trajectory, by verl's ``compute_grpo_outcome_advantage``.

    ``A_i = (r_i − mean_g) / (std_g + adv_epsilon)`` over the trajectories of group g (unbiased
    std), or ``A_i = r_i − mean_g`` when ``cfg.norm_adv_by_std`` is False (Dr.GRPO). The caller
    copies A_i to every token of every row of trajectory i.

    Groups whose rewards are all equal get exactly 0, which verl alone does not guarantee: the
    float32 mean of equal non-dyadic rewards (eight 0.7s) is off by an ulp, leaving r − mean ≈ 6e-8
    and std ≈ 6e-8, and dividing by std + 1e-6 blows that up to an advantage of 0.06 for the whole
    group (Dr.GRPO keeps the harmless 6e-8). A singleton group gets 0 too, where verl would use mean 0 and std 1
    (A = r, an un-baselined reward).

    Args:
        rewards: float32 ``[n]``, one scalar reward per trajectory, no NaN (see :func:`informative_groups`).
        group_ids: ``[n]`` hashable ids; equal ids form one group.
        cfg: uses ``norm_adv_by_std`` and ``adv_epsilon``.

    Returns:
        float32 ``[n]`` advantages.
    """
    informative = informative_groups(rewards, group_ids)
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    token_level_rewards = rewards.unsqueeze(-1)  # one "token" carrying the outcome reward
    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=torch.ones_like(token_level_rewards),
        index=np.fromiter(group_ids, dtype=object, count=len(rewards)),
        epsilon=cfg.adv_epsilon,
        norm_adv_by_std_in_grpo=cfg.norm_adv_by_std,
    )
    return torch.where(torch.as_tensor(informative, device=rewards.device), advantages.squeeze(-1), 0.0)


def policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: GRPOConfig,
    *,
    ref_log_prob: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    batch_num_tokens: float | None = None,
    global_batch_size: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of one micro-batch, composed as verl's actor loss (``workers/utils/losses.ppo_loss``).

    ``loss = pg_loss + kl_coef · agg(kl_penalty(log_prob, ref_log_prob)) − entropy_coef · agg(entropy)``,
    where ``pg_loss`` is verl's ``cfg.policy_loss`` (vanilla: token loss
    ``max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))``, capped at ``−c·A`` when A < 0, with
    ρ = exp(log_prob − old_log_prob)) and ``agg`` is verl's ``agg_loss`` in ``cfg.loss_agg_mode``.

    Gradient accumulation: pass the whole mini-batch's totals as ``batch_num_tokens`` and
    ``global_batch_size`` (verl puts them in the actor config's ``global_batch_info``); then
    every mode normalises by the mini-batch, and the sum of the micro-batch losses equals the
    loss of the mini-batch in one piece. Left None, each micro-batch is normalised on its own.
    ``seq-mean-token-sum-norm`` divides by the padded length ``seq`` of each micro-batch, so it
    sums exactly only when the micro-batches share one padded length.

    Args:
        log_prob: float32 ``[batch, seq]``, current policy, with grad.
        old_log_prob: float32 ``[batch, seq]``, the policy that sampled the tokens.
        advantages: float32 ``[batch, seq]``, each trajectory's advantage on its tokens.
        response_mask: bool or float ``[batch, seq]``, 1 on the policy's own tokens.
        cfg: loss settings.
        ref_log_prob: float32 ``[batch, seq]``, reference policy; required when ``cfg.kl_coef > 0``.
        entropy: float32 ``[batch, seq]``, token entropy of the current policy; logged whenever
            given, in the loss when ``cfg.entropy_coef > 0``.
        batch_num_tokens: masked tokens in the whole mini-batch (``token-mean``).
        global_batch_size: rows with at least one masked token in the whole mini-batch (``seq-mean-*``).

    Returns:
        ``(loss, metrics)``: scalar loss to backpropagate; ``pg_loss``, ``loss``, ``kl`` (when
        ``ref_log_prob`` is given), ``entropy`` (when ``entropy`` is given) are aggregated like the
        loss, so with mini-batch totals they are this micro-batch's share (sum them over micro-
        batches); ``pg_clipfrac``, ``pg_clipfrac_lower``, ``ppo_kl`` (approx. KL old → new) and any
        other metric of the verl loss are micro-batch means.

    Raises:
        ValueError: ``cfg.kl_coef > 0`` without ``ref_log_prob``.
    """
    if cfg.kl_coef > 0 and ref_log_prob is None:
        raise ValueError("kl_coef > 0 needs ref_log_prob (log-probs of the reference model)")
    mask = response_mask.bool()
    actor_cfg = ActorConfig(
        strategy="fsdp",  # strategy, rollout_n and the micro-batch size are required, unused by the loss
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=cfg.micro_batch_rows,
        clip_ratio_low=cfg.clip_ratio_low,
        clip_ratio_high=cfg.clip_ratio_high,
        clip_ratio_c=cfg.clip_ratio_c,
        loss_agg_mode=cfg.loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=cfg.policy_loss),
        global_batch_info={"batch_num_tokens": batch_num_tokens, "global_batch_size": global_batch_size},
    )

    def agg(loss_mat: torch.Tensor) -> torch.Tensor:
        return agg_loss(loss_mat, mask, cfg.loss_agg_mode, **actor_cfg.global_batch_info)

    pg_loss, pg_metrics = get_policy_loss_fn(cfg.policy_loss)(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=cfg.loss_agg_mode,
        config=actor_cfg,
    )
    metrics = {k.removeprefix("actor/"): float(v) for k, v in pg_metrics.items()}
    metrics["pg_loss"] = pg_loss.item()
    loss = pg_loss
    if ref_log_prob is not None:
        kl = agg(kl_penalty(log_prob, ref_log_prob, cfg.kl_estimator))
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = kl.item()
    if entropy is not None:
        entropy_loss = agg(entropy)
        loss = loss - cfg.entropy_coef * entropy_loss
        metrics["entropy"] = entropy_loss.item()
    metrics["loss"] = loss.item()
    return loss, metrics
