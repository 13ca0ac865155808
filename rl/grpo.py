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
        recompute_old_logprobs: ``auto``, ``true`` or ``false``: the learner recomputes the PPO
            ratio's old log-probs with the step's weights before its first update, as verl's
            trainer does (``verl/trainer/ppo/ray_trainer.py``, ``_compute_old_log_prob``), instead
            of taking the rollout engine's. ``auto`` recomputes unless the engine generates with
            the learner's own module (the transformers engine in one process: the same weights in
            the same dtype give the same log-probs); a vLLM engine, an engine in another dtype or
            with its own copy of the weights, and vLLM's untempered log-probs at T != 1, otherwise
            make the first ratio mismatch noise that the clip acts on. See
            :meth:`recomputes_old_logprobs`. Local trainer only: the verl backend always
            recomputes (verl's default; ``algorithm.rollout_correction.bypass_mode`` would skip it).

    Loss aggregation, local trainer: ``token-mean`` and ``token-sum`` weight every token alike;
    the ``seq-mean-*`` modes count each trajectory's rows of a mini-batch as one sequence (a
    first row packing 20 turns weighs as much per token as the later rows of its trajectory),
    see :func:`sequence_weights`. The verl backend hands verl one row per sequence, so there
    ``seq-mean-*`` weight each row as one sequence (verl's ``agg_loss`` has no notion of a
    trajectory made of several rows).

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
    recompute_old_logprobs: str = "auto"

    def __post_init__(self):
        self.recompute_old_logprobs = str(
            self.recompute_old_logprobs
        ).lower()  # YAML true/false arrive as bools
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
            (
                "recompute_old_logprobs",
                self.recompute_old_logprobs in ("auto", "true", "false"),
                "must be 'auto', 'true' or 'false'",
            ),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"rl.{name} {rule}, got {getattr(self, name)!r}")

    def recomputes_old_logprobs(self, engine_is_policy: bool) -> bool:
        """Whether the learner recomputes old log-probs (``recompute_old_logprobs``).

        Args:
            engine_is_policy: the rollout engine generates with the learner's own module (so in
                the learner's dtype); only ``auto`` looks at it.
        """
        if self.recompute_old_logprobs == "auto":
            return not engine_is_policy
        return self.recompute_old_logprobs == "true"


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
    """One GRPO advantage per trajectory, by :func:`grpo_outcome_advantage` (verl's formula).

    ``A_i = (r_i − mean_g) / (std_g + adv_epsilon)`` over the trajectories of group g (unbiased
    std), or ``A_i = r_i − mean_g`` when ``cfg.norm_adv_by_std`` is False (Dr.GRPO); exactly 0
    in a group whose rewards are all equal. The caller copies A_i to every token of every row of
    trajectory i.

    Args:
        rewards: float32 ``[n]``, one scalar reward per trajectory, no NaN (see :func:`informative_groups`).
        group_ids: ``[n]`` hashable ids; equal ids form one group.
        cfg: uses ``norm_adv_by_std`` and ``adv_epsilon``.

    Returns:
        float32 ``[n]`` advantages.
    """
    token_level_rewards = torch.as_tensor(rewards, dtype=torch.float32).unsqueeze(-1)  # one "token" each
    advantages, _ = grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=torch.ones_like(token_level_rewards),
        index=np.fromiter(group_ids, dtype=object, count=len(token_level_rewards)),
        epsilon=cfg.adv_epsilon,
        norm_adv_by_std_in_grpo=cfg.norm_adv_by_std,
    )
    return advantages.squeeze(-1)


def grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's ``compute_grpo_outcome_advantage`` (``verl/trainer/ppo/core_algos.py``), same
    signature and result, except that a group whose scores are all equal gets exactly 0.

    Both backends use it: the local trainer through :func:`group_advantages`, the verl backend
    in place of verl's function during the V1 trainer's advantage step
    (:class:`~streamreason.rl.verl_trainer.StreamPPOTrainer`).

    Why: the float32 mean of equal non-dyadic scores (eight 0.7s) is off by an ulp, leaving
    r − mean ≈ 6e-8 and std ≈ 6e-8, and verl's division by std + 1e-6 blows that up to an
    advantage of +0.056 for the whole group (eight 0.2s: −0.0147); Dr.GRPO keeps the harmless
    6e-8. A singleton group gets 0 too, where verl uses mean 0 and std 1 (A = r, an
    un-baselined reward).

    Args:
        token_level_rewards: float32 ``[batch, response_len]``; a row's score is its sum.
        response_mask: ``[batch, response_len]``, 1 on the response tokens.
        index: ``[batch]`` group ids (verl's ``uid``); equal ids form one group.
        epsilon: added to the group std before dividing.
        norm_adv_by_std_in_grpo: False: A = r − mean (Dr.GRPO, arXiv 2503.20783).
        config: verl's ``AlgoConfig``, passed on (unused by the formula).

    Returns:
        ``(advantages, returns)``, the same float32 ``[batch, response_len]`` tensor twice, each
        row's advantage on its masked tokens, as verl returns them.

    Raises:
        ValueError: lengths differ, or a score is NaN (:func:`informative_groups`).
    """
    informative = informative_groups(token_level_rewards.sum(dim=-1), index)
    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        config=config,
    )
    keep = torch.as_tensor(informative, device=advantages.device).unsqueeze(-1)
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    return advantages, advantages


def sequence_weights(
    loss_tokens: Sequence[int],
    trajectories: Sequence[Hashable],
    mode: str,
    num_sequences: float | None = None,
) -> np.ndarray:
    """Weight of each row's sequence loss when each trajectory's rows count as one sequence.

    verl's ``agg_loss`` (``verl/trainer/ppo/core_algos.py``) treats each row as a sequence:
    ``seq-mean-token-mean`` is ``(1/R) Σ_r mean_{t∈r} l_t`` over the R rows, so a trajectory cut
    into several rows (one per eviction block) counts several times, and the turns of a long row
    weigh less per token than those of a short one. Here trajectory j, with rows r ∈ j holding
    ``n_r`` loss tokens and ``n_j = Σ_{r∈j} n_r``, is one sequence of T in the mini-batch:

    - ``seq-mean-token-mean``: ``(1/T) Σ_j (1/n_j) Σ_{t∈j} l_t``, i.e. row weight ``n_r / (n_j · T)``
      on the row's token mean;
    - ``seq-mean-token-sum`` and ``seq-mean-token-sum-norm``: ``(1/T) Σ_j Σ_{t∈j} l_t`` (the
      latter then divided by the padded length, as verl does), i.e. row weight ``1 / T`` on the
      row's token sum.

    Rows with no loss token weigh 0. With one row per trajectory these are verl's own weights.

    Args:
        loss_tokens: ``[R]`` loss-token count of each row of the mini-batch.
        trajectories: ``[R]`` the trajectory each row belongs to (any hashable id).
        mode: a ``seq-mean-*`` mode of :data:`LOSS_AGG_MODES`.
        num_sequences: T, trajectories with at least one loss token in the whole mini-batch (all
            ranks; a trajectory's rows are on one rank); None: counted from ``trajectories``.

    Returns:
        float64 ``[R]`` weights for :func:`policy_loss`'s ``seq_weights``; they sum to
        (trajectories here) / T for ``seq-mean-token-mean``.

    Raises:
        ValueError: ``mode`` is not a ``seq-mean-*`` mode, or the lengths differ.
    """
    if not mode.startswith("seq-mean"):
        raise ValueError(f"sequence weights are for the seq-mean-* modes, not {mode!r}")
    if len(loss_tokens) != len(trajectories):
        raise ValueError(f"{len(loss_tokens)} token counts but {len(trajectories)} trajectory ids")
    n = np.asarray(loss_tokens, dtype=np.float64)
    per_traj: dict[Hashable, float] = defaultdict(float)
    for j, k in zip(trajectories, n):
        per_traj[j] += k
    if num_sequences is None:
        num_sequences = sum(v > 0 for v in per_traj.values())
    n_traj = np.array([per_traj[j] for j in trajectories])
    share = n / np.maximum(n_traj, 1.0) if mode == "seq-mean-token-mean" else (n > 0).astype(np.float64)
    return share / max(float(num_sequences), 1.0)


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
    seq_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of one micro-batch, composed as verl's actor loss (``workers/utils/losses.ppo_loss``).

    ``loss = pg_loss + kl_coef · agg(kl_penalty(log_prob, ref_log_prob)) − entropy_coef · agg(entropy)``,
    where ``pg_loss`` is verl's ``cfg.policy_loss`` (vanilla: token loss
    ``max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))``, capped at ``−c·A`` when A < 0, with
    ρ = exp(log_prob − old_log_prob)) and ``agg`` is verl's ``agg_loss`` in ``cfg.loss_agg_mode``.

    Gradient accumulation: pass the whole mini-batch's ``batch_num_tokens`` (``token-mean``; verl
    puts it in the actor config's ``global_batch_info``) or each row's ``seq_weights``
    (``seq-mean-*``, from :func:`sequence_weights` over the mini-batch); then the sum of the
    micro-batch losses equals the loss of the mini-batch in one piece. Left None, each
    micro-batch is normalised on its own, as verl's ``agg_loss`` without global totals.
    With ``seq_weights`` the loss is ``Σ_r seq_weights[r] · loss(row r alone)``, each row's loss
    being verl's on that row with a global batch size of 1; a uniform ``1/R`` gives verl's
    ``seq-mean-*`` over R rows. ``seq-mean-token-sum-norm`` divides by the padded length ``seq``
    of each micro-batch, so it sums exactly only when the micro-batches share one padded length.

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
        seq_weights: float ``[batch]``, the weight of each row's sequence loss (``seq-mean-*`` only).

    Returns:
        ``(loss, metrics)``: scalar loss to backpropagate; ``pg_loss``, ``loss``, ``kl`` (when
        ``ref_log_prob`` is given), ``entropy`` (when ``entropy`` is given) are aggregated like the
        loss, so with mini-batch totals they are this micro-batch's share (sum them over micro-
        batches); ``pg_clipfrac``, ``pg_clipfrac_lower``, ``ppo_kl`` (approx. KL old → new) and any
        other metric of the verl loss are micro-batch token means.

    Raises:
        ValueError: ``cfg.kl_coef > 0`` without ``ref_log_prob``; ``seq_weights`` in a token mode.
    """
    if cfg.kl_coef > 0 and ref_log_prob is None:
        raise ValueError("kl_coef > 0 needs ref_log_prob (log-probs of the reference model)")
    if seq_weights is not None and not cfg.loss_agg_mode.startswith("seq-mean"):
        raise ValueError(f"seq_weights apply to the seq-mean-* modes, not {cfg.loss_agg_mode!r}")
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
        global_batch_info={
            "batch_num_tokens": batch_num_tokens,
            "global_batch_size": None if seq_weights is None else 1,
        },
    )
    pg_fn = get_policy_loss_fn(cfg.policy_loss)
    # the micro-batch in one piece, or each row alone with its weight (and its share of the tokens
    # for the verl metrics, which are token means)
    if seq_weights is None:
        pieces = [(slice(None), 1.0, 1.0)]
    else:
        total = max(float(mask.sum()), 1.0)
        pieces = [
            (slice(j, j + 1), float(w), float(mask[j].sum()) / total)
            for j, w in enumerate(seq_weights.tolist())
        ]
    loss = log_prob.new_zeros(())
    terms = {"pg_loss": 0.0, "kl": 0.0, "entropy": 0.0}
    metrics: dict[str, float] = {}
    for rows, weight, share in pieces:
        m = mask[rows]
        pg_loss, pg_metrics = pg_fn(
            old_log_prob=old_log_prob[rows],
            log_prob=log_prob[rows],
            advantages=advantages[rows],
            response_mask=m,
            loss_agg_mode=cfg.loss_agg_mode,
            config=actor_cfg,
        )
        for k, v in pg_metrics.items():
            metrics[k.removeprefix("actor/")] = metrics.get(k.removeprefix("actor/"), 0.0) + share * float(v)
        piece = pg_loss
        terms["pg_loss"] += weight * pg_loss.item()
        if ref_log_prob is not None:
            kl = agg_loss(kl_penalty(log_prob[rows], ref_log_prob[rows], cfg.kl_estimator), m, cfg.loss_agg_mode,
                          **actor_cfg.global_batch_info)  # fmt: skip
            piece = piece + cfg.kl_coef * kl
            terms["kl"] += weight * kl.item()
        if entropy is not None:
            entropy_loss = agg_loss(entropy[rows], m, cfg.loss_agg_mode, **actor_cfg.global_batch_info)
            piece = piece - cfg.entropy_coef * entropy_loss
            terms["entropy"] += weight * entropy_loss.item()
        loss = loss + weight * piece
    metrics["pg_loss"] = terms["pg_loss"]
    if ref_log_prob is not None:
        metrics["kl"] = terms["kl"]
    if entropy is not None:
        metrics["entropy"] = terms["entropy"]
    metrics["loss"] = loss.item()
    return loss, metrics
