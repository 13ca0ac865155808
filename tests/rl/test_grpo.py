"""GRPO glue against verl's core_algos called directly on the same inputs."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import (
    agg_loss,
    compute_grpo_outcome_advantage,
    compute_policy_loss_vanilla,
    kl_penalty,
)
from verl.workers.config import ActorConfig

from streamreason.errors import ConfigError
from streamreason.rl.grpo import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    GRPOConfig,
    group_advantages,
    informative_groups,
    policy_loss,
    sequence_weights,
)

# ---------------------------------------------------------------------------------------------
# advantages


@pytest.mark.parametrize("norm", [True, False])
def test_advantages_equal_verl(norm):
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.25, 0.75, 0.5])
    ids = ["a", "a", "a", "a", "b", "b", "b", ("c", 1), ("c", 1), "a"]  # "b" has zero variance
    cfg = GRPOConfig(norm_adv_by_std=norm)
    index = np.empty(len(ids), dtype=object)
    for i, g in enumerate(ids):
        index[i] = g
    expected, _ = compute_grpo_outcome_advantage(
        rewards[:, None],
        torch.ones(len(ids), 1),
        index,
        epsilon=cfg.adv_epsilon,
        norm_adv_by_std_in_grpo=norm,
    )
    adv = group_advantages(rewards, ids, cfg)
    assert adv.shape == (10,) and adv.dtype == torch.float32
    torch.testing.assert_close(adv, expected[:, 0], rtol=0, atol=0)
    assert adv[4:7].eq(0).all()


def test_advantages_by_hand():
    r = np.array([0.2, 0.9, 0.4, 0.5])
    grpo = group_advantages(torch.tensor(r, dtype=torch.float32), ["q"] * 4, GRPOConfig())
    dr_grpo = group_advantages(
        torch.tensor(r, dtype=torch.float32), ["q"] * 4, GRPOConfig(norm_adv_by_std=False)
    )
    np.testing.assert_allclose(grpo.numpy(), (r - r.mean()) / (r.std(ddof=1) + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(dr_grpo.numpy(), r - r.mean(), rtol=1e-5)


@pytest.mark.parametrize("norm", [True, False])
def test_equal_rewards_and_singletons_get_exactly_zero(norm):
    # float32 mean of eight 0.7s is an ulp off; verl alone gives these a 0.06 advantage
    rewards = torch.tensor([0.7] * 8 + [0.3])
    adv = group_advantages(rewards, ["a"] * 8 + ["alone"], GRPOConfig(norm_adv_by_std=norm))
    assert adv.eq(0).all()


def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.5, 2.0, 1.0, 2.0, 3.0])
    ids = [0, 1, 0, 2, 3, 1, 3, 3]  # groups interleaved; 1 all equal, 2 singleton
    assert informative_groups(rewards, ids).tolist() == [True, False, True, False, True, False, True, True]
    assert informative_groups([], []).dtype == bool


def test_informative_groups_rejects_nan_and_length_mismatch():
    with pytest.raises(ValueError, match="NaN"):
        informative_groups(torch.tensor([1.0, float("nan")]), ["a", "a"])
    with pytest.raises(ValueError, match="group ids"):
        informative_groups(torch.tensor([1.0, 0.0]), ["a"])


# ---------------------------------------------------------------------------------------------
# loss


def _batch(rows=6, seq=7):
    """Log-probs whose ratios fall on both sides of the clip range, ragged masks, per-row advantages."""
    g = torch.Generator().manual_seed(0)
    old = -3 * torch.rand(rows, seq, generator=g)
    new = old + 0.5 * torch.randn(rows, seq, generator=g)
    new[0, 0] = old[0, 0] + 2.0  # ratio e² > c = 3 with A < 0: dual clip
    ref = old + 0.3 * torch.randn(rows, seq, generator=g)
    adv = torch.tensor([-1.0, 0.5, 1.2, -0.3, 0.8, -2.0])[:, None].expand(rows, seq).contiguous()
    mask = torch.arange(seq) < torch.tensor([7, 3, 5, 1, 6, 4])[:, None]
    entropy = torch.rand(rows, seq, generator=g)
    return new.requires_grad_(), old, ref, adv, mask, entropy


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_loss_equals_verl(mode):
    new, old, ref, adv, mask, entropy = _batch()
    cfg = GRPOConfig(
        clip_ratio_low=0.2, clip_ratio_high=0.28, loss_agg_mode=mode, kl_coef=0.1, entropy_coef=0.01
    )
    loss, metrics = policy_loss(new, old, adv, mask.float(), cfg, ref_log_prob=ref, entropy=entropy)

    actor = ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio_low=0.2, clip_ratio_high=0.28
    )
    pg, pg_metrics = compute_policy_loss_vanilla(old, new, adv, mask, mode, actor)
    kl = agg_loss(kl_penalty(new, ref, "low_var_kl"), mask, mode)
    ent = agg_loss(entropy, mask, mode)
    torch.testing.assert_close(loss, pg + 0.1 * kl - 0.01 * ent)
    assert metrics["pg_loss"] == pytest.approx(pg.item())
    assert metrics["kl"] == pytest.approx(kl.item())
    assert metrics["entropy"] == pytest.approx(ent.item())
    assert metrics["loss"] == pytest.approx(loss.item())
    for name in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"):
        assert metrics[name] == pytest.approx(pg_metrics[f"actor/{name}"])
    assert metrics["pg_clipfrac"] > 0 and metrics["pg_clipfrac_lower"] > 0


def test_clip_higher_and_dual_clip_by_hand():
    # one token per row: ratio 2 with A = 1, ratio 0.5 with A = −1, ratio 5 with A = −1
    old = torch.zeros(3, 1)
    new = torch.log(torch.tensor([[2.0], [0.5], [5.0]]))
    adv = torch.tensor([[1.0], [-1.0], [-1.0]])
    cfg = GRPOConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    loss, _ = policy_loss(new, old, adv, torch.ones(3, 1), cfg)
    # −A·(1 + ε_high), −A·(1 − ε_low), and −A·ρ = 5 capped at −A·c = 3
    assert loss.item() == pytest.approx((-1.28 + 0.8 + 3.0) / 3)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batch_losses_sum_to_mini_batch_loss(mode):
    new, old, ref, adv, mask, entropy = _batch()
    cfg = GRPOConfig(loss_agg_mode=mode, kl_coef=0.1, entropy_coef=0.01)
    whole, whole_metrics = policy_loss(new, old, adv, mask, cfg, ref_log_prob=ref, entropy=entropy)
    seq = mode.startswith("seq-mean")
    # uniform weights over the rows that hold loss tokens: verl's own seq-mean over the rows
    weights = mask.any(-1).double() / mask.any(-1).sum()
    parts = [
        policy_loss(
            new[s],
            old[s],
            adv[s],
            mask[s],
            cfg,
            ref_log_prob=ref[s],
            entropy=entropy[s],
            batch_num_tokens=mask.sum().item(),
            seq_weights=weights[s] if seq else None,
        )  # fmt: skip
        for s in (slice(0, 2), slice(2, 4), slice(4, 6))
    ]
    torch.testing.assert_close(sum(loss for loss, _ in parts), whole)
    assert sum(m["loss"] for _, m in parts) == pytest.approx(whole_metrics["loss"])


def _two_trajectories():
    """Trajectory 0 in two rows (6 and 2 loss tokens), trajectory 1 in one row (4 tokens), and
    the same tokens with trajectory 0's rows joined into one row (the one-sequence oracle)."""
    g = torch.Generator().manual_seed(1)
    lens, width = [6, 2, 4], 8
    old = -2 * torch.rand(3, width, generator=g)
    new = old + 0.3 * torch.randn(3, width, generator=g)
    adv = torch.tensor([0.7, 0.7, -1.3])[:, None].expand(3, width).contiguous()
    mask = torch.arange(width) < torch.tensor(lens)[:, None]
    joined = [torch.zeros(2, 2 * width) for _ in range(3)]
    for src, dst in zip((new, old, adv), joined):
        dst[0, :6], dst[0, 6:8], dst[1, :4] = src[0, :6], src[1, :2], src[2, :4]
    joined_mask = torch.arange(2 * width) < torch.tensor([8, 4])[:, None]
    return (new, old, adv, mask), (*joined, joined_mask)


def test_sequence_weights_by_hand():
    # trajectory "a": rows of 6 and 2 tokens (and an empty row), "b": one row of 4; T = 2
    tokens, trajs = [6, 2, 0, 4], ["a", "a", "a", "b"]
    mean = sequence_weights(tokens, trajs, "seq-mean-token-mean")
    np.testing.assert_allclose(mean, [6 / 8 / 2, 2 / 8 / 2, 0, 1 / 2], rtol=0, atol=1e-15)
    # per token: every token of "a" weighs 1/16, of "b" 1/8; each trajectory weighs 1/2 in all
    assert mean[0] / 6 == mean[1] / 2 == 1 / 16 and mean[3] / 4 == 1 / 8
    for mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        np.testing.assert_array_equal(sequence_weights(tokens, trajs, mode), [0.5, 0.5, 0, 0.5])
    np.testing.assert_array_equal(
        sequence_weights(tokens, trajs, "seq-mean-token-sum", 4), [0.25, 0.25, 0, 0.25]
    )
    with pytest.raises(ValueError, match="seq-mean"):
        sequence_weights(tokens, trajs, "token-mean")


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_seq_mean_modes_weight_each_trajectory_as_one_sequence(mode):
    """The loss of a trajectory cut into rows, with :func:`sequence_weights`, equals verl's loss
    on the batch where each trajectory is one row; verl's row weighting does not."""
    (new, old, adv, mask), (j_new, j_old, j_adv, j_mask) = _two_trajectories()
    cfg = GRPOConfig(loss_agg_mode=mode, clip_ratio_high=0.28)
    w = torch.from_numpy(sequence_weights(mask.sum(-1).tolist(), [0, 0, 1], mode))
    ours, _ = policy_loss(new, old, adv, mask, cfg, seq_weights=w)
    actor = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio_high=0.28)
    oracle, _ = compute_policy_loss_vanilla(j_old, j_new, j_adv, j_mask, mode, actor)
    torch.testing.assert_close(ours, oracle, rtol=1e-6, atol=1e-7)
    per_row, _ = policy_loss(new, old, adv, mask, cfg)  # verl's weighting: three sequences
    assert abs(per_row.item() - oracle.item()) > 1e-3


def test_gradient_is_finite_and_zero_on_masked_tokens():
    new, old, ref, adv, mask, entropy = _batch()
    cfg = GRPOConfig(clip_ratio_high=0.28, kl_coef=0.1, kl_estimator="k3+")
    loss, _ = policy_loss(new, old, adv, mask, cfg, ref_log_prob=ref)
    loss.backward()
    assert torch.isfinite(new.grad).all()
    assert new.grad[~mask].eq(0).all() and new.grad[mask].ne(0).any()


def test_kl_and_entropy_logged_without_their_terms():
    new, old, ref, adv, mask, entropy = _batch()
    loss, metrics = policy_loss(new, old, adv, mask, GRPOConfig(), ref_log_prob=ref, entropy=entropy)
    assert loss.item() == pytest.approx(metrics["pg_loss"])
    assert metrics["kl"] > 0 and metrics["entropy"] > 0


def test_kl_coef_needs_reference():
    new, old, _, adv, mask, _ = _batch()
    with pytest.raises(ValueError, match="ref_log_prob"):
        policy_loss(new, old, adv, mask, GRPOConfig(kl_coef=0.01))


def test_other_verl_policy_loss():
    new, old, _, adv, mask, _ = _batch()
    loss, metrics = policy_loss(
        new, old, adv, mask, GRPOConfig(policy_loss="gspo", loss_agg_mode="seq-mean-token-mean")
    )
    assert math.isfinite(loss.item()) and "ppo_kl" in metrics


# ---------------------------------------------------------------------------------------------
# config


def test_names_are_ones_verl_accepts():
    one, mask = torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)
    for mode in LOSS_AGG_MODES:
        agg_loss(one, mask, mode)
    for name in KL_ESTIMATORS:
        kl_penalty(one, one, name)
        kl_penalty(one, one, name + "+")


def test_config_from_omegaconf():
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GRPOConfig), {"clip_ratio_high": 0.28}))
    assert isinstance(cfg, GRPOConfig) and cfg.clip_ratio_high == 0.28
    with pytest.raises(ConfigError, match=r"rl\.clip_ratio_c"):
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GRPOConfig), {"clip_ratio_c": 1.0}))


@pytest.mark.parametrize(
    "field, value",
    [
        ("adv_epsilon", 0.0),
        ("policy_loss", "ppo"),
        ("clip_ratio_low", 1.0),
        ("clip_ratio_high", 0.0),
        ("clip_ratio_c", 1.0),
        ("loss_agg_mode", "mean"),
        ("kl_coef", -0.1),
        ("kl_estimator", "k4"),
        ("entropy_coef", -0.01),
        ("ppo_epochs", 0),
        ("mini_batches", 0),
        ("micro_batch_rows", 0),
        ("recompute_old_logprobs", "sometimes"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"rl\.{field}\b"):
        GRPOConfig(**{field: value})


@pytest.mark.parametrize(
    "value, shared, separate", [("auto", False, True), (True, True, True), ("false", False, False)]
)
def test_recompute_old_logprobs_resolution(value, shared, separate):
    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(GRPOConfig), {"recompute_old_logprobs": value})
    )
    assert cfg.recomputes_old_logprobs(engine_is_policy=True) is shared
    assert cfg.recomputes_old_logprobs(engine_is_policy=False) is separate
