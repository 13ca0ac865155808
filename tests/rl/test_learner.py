"""The learner's old log-probs (rollout's or recomputed) and its seq-mean weighting, on the tiny model."""

import copy

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
