"""The learner's old log-probs (rollout's or recomputed) and its seq-mean weighting, on the tiny model."""

import copy
import math

import numpy as np
import pytest
import torch

import streamreason.rl.learner as learner_module
from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import Learner, OptimConfig
from streamreason.rl.rows import build_rows
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.engine import TransformersEngine
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import ProtocolConfig, get_protocol
from streamreason.types import read_rows

ENV = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112, max_chunks=6)


@pytest.fixture(scope="module")
def bf16_rollout(tiny_policy, synth_splits):
    """Rows of G = 2 trajectories per stream sampled by a bf16 copy of the fp32 tiny model
    (window 3, evictions of 1: several rows per trajectory), with advantages of both signs."""
    model, processor = tiny_policy
    rows, _ = read_rows(synth_splits[0])
    cfg = RolloutConfig(env=ENV, memory=MemoryConfig(window_chunks=3, evict_block=1),
                        protocol=ProtocolConfig(think_budget=4, max_new_tokens=8), group_size=2)  # fmt: skip
    engine = TransformersEngine(copy.deepcopy(model).to(torch.bfloat16), processor.tokenizer, seed=0)
    with EnvPool(ENV, in_process=True) as pool:
        trajs, _ = run_rollouts(rows[:2], pool=pool, engine=engine,
                                encoder=ChatEncoder(processor, get_protocol("watch_think_speak")), cfg=cfg)  # fmt: skip
    train = build_rows(trajs, advantages=[1.0, -1.0, 0.5, -0.5])
    assert len(train) > len(trajs)
    return model, processor, train


def _update(bf16_rollout, monkeypatch, **grpo):
    """One ``grpo_update`` of an fp32 learner on the bf16 rows; returns its metrics and, per
    ``policy_loss`` call, ``(update index, log_prob, old_log_prob, mask)``."""
    model, processor, train = bf16_rollout
    learner = Learner(copy.deepcopy(model), OptimConfig(lr=1e-2, warmup_ratio=0),
                      GRPOConfig(mini_batches=2, micro_batch_rows=2, **grpo), total_steps=2,
                      pad_id=processor.tokenizer.pad_token_id)  # fmt: skip
    calls = []
    real = learner_module.policy_loss

    def spy(log_prob, old_log_prob, advantages, mask, cfg, **kw):
        calls.append((learner.scheduler.last_epoch, log_prob.detach(), old_log_prob, mask.bool()))
        return real(log_prob, old_log_prob, advantages, mask, cfg, **kw)

    monkeypatch.setattr(learner_module, "policy_loss", spy)
    return learner.grpo_update(train), calls


def _max_log_ratio(calls, update):
    return max(float((lp - old)[m].abs().max()) for k, lp, old, m in calls if k == update and m.any())


def test_recomputed_old_logprobs_make_the_first_ratios_exactly_one(bf16_rollout, monkeypatch):
    """bf16 engine, fp32 learner: with recomputed old log-probs every ratio of the first
    mini-batch of the first epoch is exactly 1 (the second mini-batch, after one update, is
    not); with the rollout's they carry the bf16 gap. The rows keep the rollout's log-probs."""
    _, _, train = bf16_rollout
    before = [r.old_logprobs.copy() for r in train]
    metrics, calls = _update(bf16_rollout, monkeypatch, recompute_old_logprobs="true")
    first = [(lp, old, m) for k, lp, old, m in calls if k == 0]
    assert len(first) >= 2  # the mini-batch ran in several micro-batches
    for lp, old, m in first:
        assert torch.equal(torch.exp(lp - old)[m], torch.ones(int(m.sum())))
    assert _max_log_ratio(calls, 1) > 1e-4  # the policy moved after the first update
    assert metrics["ppo_kl"] != 0
    assert 0 < metrics["rollout_probs_diff_mean"] <= metrics["rollout_probs_diff_max"] < 0.1
    assert metrics["rollout_probs_diff_std"] > 0
    print(f"bf16 rollout vs fp32 learner: max |p - p'| {metrics['rollout_probs_diff_max']:.2e}, "
          f"mean {metrics['rollout_probs_diff_mean']:.2e}")  # fmt: skip
    for r, b in zip(train, before):
        np.testing.assert_array_equal(r.old_logprobs, b)

    metrics, calls = _update(bf16_rollout, monkeypatch, recompute_old_logprobs="false")
    gap = _max_log_ratio(calls, 0)
    print(f"first-mini-batch max |log ratio| with the rollout's old log-probs: {gap:.2e}")
    assert gap > 1e-3
    assert "rollout_probs_diff_max" not in metrics


def test_auto_takes_the_rollout_logprobs_only_from_the_learners_own_module(bf16_rollout):
    model, processor, _ = bf16_rollout
    pad = processor.tokenizer.pad_token_id
    own = Learner(copy.deepcopy(model), OptimConfig(), GRPOConfig(), 1, pad, engine_is_policy=True)
    other = Learner(copy.deepcopy(model), OptimConfig(), GRPOConfig(), 1, pad, engine_is_policy=False)
    assert not own.recompute_old_logprobs and other.recompute_old_logprobs


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_seq_mean_gradient_does_not_depend_on_micro_batches(bf16_rollout, mode):
    """Trajectory weights are the mini-batch's (sequence_weights), not each micro-batch's: one
    row per micro-batch and all rows in one give the same gradient and loss."""
    model, processor, train = bf16_rollout
    grads, losses = [], []
    for micro in (1, len(train)):
        learner = Learner(copy.deepcopy(model), OptimConfig(warmup_ratio=0),
                          GRPOConfig(loss_agg_mode=mode, micro_batch_rows=micro, recompute_old_logprobs="false"),
                          total_steps=1, pad_id=processor.tokenizer.pad_token_id)  # fmt: skip
        learner._step = lambda *_: {}  # keep the gradients for comparison
        losses.append(learner.grpo_update(train)["loss"])
        grads.append({n: p.grad for n, p in learner.model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)  # ±1 terms that nearly cancel
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_sft_state_weights_are_streamos_focal_loss_on_hand_numbers():
    """Streamo's state-token weight (maifoundations/Streamo swift/plugin/loss.py stream_focal_loss,
    auto_alpha, gamma=2): alpha_c = sum_j n_j / (C n_c) over the C states present, w = alpha (1 - p)^gamma,
    the gradient through (1 - p)^gamma. Trajectory A: 4 silent, 1 response, 1 standby; B: 3 silent, 1 response."""
    from streamreason.rl.learner import focal_weights, state_alphas

    a, b = np.array([0, 0, -1, 0, 0, 1, 2]), np.array([0, -1, 0, 1, 0])
    # per trajectory (sft.alpha_counts=trajectory): A 6 / (3 * 4), 6 / (3 * 1); B 4 / (2 * 3), 4 / (2 * 1)
    assert state_alphas([a, b, None], [0, 1, 1]) == [
        {0: 0.5, 1: 2.0, 2: 2.0},
        {0: pytest.approx(2 / 3), 1: 2.0},
        {},
    ]
    # per step: 7 silent, 2 response, 1 standby: 10 / 21, 10 / 6, 10 / 3
    step = state_alphas([a, b], [0, 0])
    assert (
        step[0] == step[1] == {0: pytest.approx(10 / 21), 1: pytest.approx(10 / 6), 2: pytest.approx(10 / 3)}
    )
    # p = 0.5, alpha 2: w = 2 * 0.5^2 = 0.5; p = 0.9, alpha 0.5: w = 0.5 * 0.1^2 = 0.005
    logp = torch.log(torch.tensor([0.5, 0.9], dtype=torch.float64)).requires_grad_()
    w = focal_weights(logp, torch.tensor([2.0, 0.5], dtype=torch.float64), 2.0)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.005], dtype=torch.float64))
    loss = -(w * logp).sum()
    assert float(loss.detach()) == pytest.approx(-(0.5 * math.log(0.5) + 0.005 * math.log(0.9)))
    loss.backward()
    # d(-alpha (1 - p)^2 log p) / d log p = -alpha (1 - p)^2 + 2 alpha p (1 - p) log p
    expected = [
        -2 * 0.25 + 2 * 2 * 0.5 * 0.5 * math.log(0.5),
        -0.5 * 0.01 + 2 * 0.5 * 0.9 * 0.1 * math.log(0.9),
    ]
    assert logp.grad.tolist() == pytest.approx(expected)  # -1.1931, -0.0145 (detached: -0.5, -0.005)
    assert focal_weights(logp, torch.tensor([2.0, 0.5]), 0.0).tolist() == [2.0, 0.5]  # gamma 0: alpha alone


def test_sft_update_loss_is_the_streamo_weighted_cross_entropy(tiny_policy, synth_splits):
    """``sft_update``'s loss on Streamo gold rows (three states) is sum w * (-log p) / loss tokens, with
    w = alpha_c (1 - p)^2 on the state tokens (alpha per trajectory) and 1 on the other tokens."""
    from streamreason.rl.learner import state_alphas
    from streamreason.rl.sft import sft_rows

    model, processor = tiny_policy
    rows, _ = read_rows(synth_splits[0])
    cfg = RolloutConfig(env=ENV, memory=MemoryConfig(keep_all_video=True),
                        protocol=ProtocolConfig(name="streamo", think_budget=0))  # fmt: skip
    with EnvPool(ENV, in_process=True) as pool:
        train, _ = sft_rows(rows, pool=pool, encoder=ChatEncoder(processor, get_protocol("streamo")), cfg=cfg)
    labels = np.concatenate([r.decision[r.decision >= 0] for r in train])
    assert set(labels.tolist()) == {0, 1, 2}  # silent, response, standby
    learner = Learner(copy.deepcopy(model), OptimConfig(lr=1e-3, warmup_ratio=0), GRPOConfig(micro_batch_rows=2),
                      total_steps=1, pad_id=processor.tokenizer.pad_token_id)  # fmt: skip
    logps = learner.logprobs(train)
    alphas = state_alphas([r.decision for r in train], [r.traj_index for r in train])
    total, focal = 0.0, []
    for r, lp, alpha in zip(train, logps, alphas):
        w = r.loss_mask.astype(np.float64)
        for i in np.flatnonzero(r.decision >= 0):
            focal.append((1 - math.exp(lp[i])) ** 2)
            w[i] = alpha[int(r.decision[i])] * focal[-1]
        total += float((w * -lp.astype(np.float64)).sum())
    metrics = learner.sft_update(train, balance=True, focal_gamma=2.0, alpha_counts="trajectory")
    assert metrics["loss"] == pytest.approx(total / sum(r.num_loss_tokens for r in train), rel=1e-4)
    assert metrics["decision_focal"] == pytest.approx(np.mean(focal), rel=1e-4)
