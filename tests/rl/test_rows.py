"""Packed training rows: the learner's log-probs equal the rollout's on the same weights."""

import math

import numpy as np
import pytest
import torch

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import Learner, OptimConfig
from streamreason.rl.rows import build_rows
from streamreason.rl.sft import decision_labels, gold_turn, sft_rows
from streamreason.rollout.engine import SamplingConfig, TransformersEngine
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import ProtocolConfig
from streamreason.types import Query, StreamRow, Thought

ENV = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112, max_chunks=8)


@pytest.mark.parametrize("window, block", [(3, 2), (2, 1), (20, 1)])
def test_learner_logprobs_equal_rollout_logprobs(setup, window, block):
    model, processor, encoder, rows = setup
    cfg = RolloutConfig(env=ENV, memory=MemoryConfig(window_chunks=window, evict_block=block),
                        protocol=ProtocolConfig(think_budget=4, max_new_tokens=10),
                        sampling=SamplingConfig(temperature=0.8, top_p=0.9, top_k=30), group_size=2)  # fmt: skip
    with EnvPool(ENV, in_process=True) as pool:
        trajs, _ = run_rollouts(rows, pool=pool, engine=TransformersEngine(model, processor.tokenizer, seed=0),
                                encoder=encoder, cfg=cfg)  # fmt: skip
    rows_ = build_rows(trajs, advantages=list(range(len(trajs))))
    n_turns = sum(len(t.turns) for t in trajs)
    expected_rows = sum(len({turn.block_start for turn in t.turns}) for t in trajs)
    assert len(rows_) == expected_rows
    if window == 20:  # no eviction: one row per trajectory
        assert len(rows_) == len(trajs)
    elif block == 1:  # the window slides every turn once full
        assert len(rows_) == sum(max(1, len(t.turns) - window + 1) for t in trajs) < n_turns
    # every sampled token of every turn is in exactly one row
    assert sum(r.num_loss_tokens for r in rows_) == sum(
        int(turn.response_mask.sum()) for t in trajs for turn in t.turns
    )
    assert all(r.advantage == r.traj_index for r in rows_)
    learner = Learner(model, OptimConfig(), GRPOConfig(micro_batch_rows=3), total_steps=1,
                      pad_id=processor.tokenizer.pad_token_id, temperature=0.8)  # fmt: skip
    diffs = [np.abs(lp - r.old_logprobs)[r.loss_mask > 0] for r, lp in zip(rows_, learner.logprobs(rows_))]
    worst = float(np.concatenate(diffs).max())
    print(f"max |learner - rollout| log-prob difference (W={window}, B={block}): {worst:.2e}")
    assert worst < 1e-4


def test_gold_trajectories_for_sft(setup):
    model, processor, encoder, rows = setup
    row = rows[0]
    q = row.queries[0]
    gt_chunk = int(q.answer_time_s // 1.0)
    assert gold_turn(encoder, row, gt_chunk, 1.0).endswith(f"<response>{q.answer}")
    assert gold_turn(encoder, row, gt_chunk + 1, 1.0).endswith("<silent>")
    # an answer (and a thought) at the stream's end belong to its last chunk, where the env shows them
    at_end = StreamRow(
        "end", row.video_path, [Query("Is it over?", 6.0, "yes", 8.0)], [Thought(8.0, "the end")]
    )
    assert gold_turn(encoder, at_end, 7, 1.0) == encoder.protocol.render("", "silent")
    assert gold_turn(encoder, at_end, 7, 1.0, last_chunk=7) == encoder.protocol.render(
        "the end", "response", "yes"
    )
    end = float(row.meta["duration_s"])
    with EnvPool(ENV, in_process=True) as pool:
        (last,), _ = sft_rows([StreamRow("end", row.video_path, [Query("Is it over?", 1.0, "yes", end)])], pool=pool,
                              encoder=encoder, cfg=RolloutConfig(env=ENV, memory=MemoryConfig(keep_all_video=True)))  # fmt: skip
    assert (last.decision[last.decision >= 0] == 1).sum() == 1  # the answer at the very end is taught
    cfg = RolloutConfig(env=ENV)
    with EnvPool(ENV, in_process=True) as pool:
        train, failures = sft_rows(rows, pool=pool, encoder=encoder, cfg=cfg)
    assert not failures
    labels = np.concatenate([r.decision[r.decision >= 0] for r in train])
    n_turns = sum(int(np.ceil(r.meta["duration_s"])) for r in rows)
    assert len(labels) == n_turns  # one decision per turn
    n_answers = sum(1 for r in rows for q in r.queries if q.answer_time_s < r.meta["duration_s"])
    assert int((labels == 1).sum()) == len({(r.id, int(q.answer_time_s)) for r in rows for q in r.queries})
    assert n_answers >= 1 and int((labels == 0).sum()) == len(labels) - int((labels == 1).sum())
    assert (decision_labels(train[0], encoder) == train[0].decision).all()


def test_sft_update_fits_the_gold_turns(setup):
    model, processor, encoder, rows = setup
    import copy

    model = copy.deepcopy(model)
    with EnvPool(ENV, in_process=True) as pool:
        train, _ = sft_rows(rows, pool=pool, encoder=encoder, cfg=RolloutConfig(env=ENV))
    learner = Learner(model, OptimConfig(lr=3e-3, schedule="constant", warmup_ratio=0), GRPOConfig(micro_batch_rows=4),
                      total_steps=30, pad_id=processor.tokenizer.pad_token_id)  # fmt: skip
    losses = [learner.sft_update(train, balance=True, focal_gamma=2.0)["loss"] for _ in range(30)]
    assert losses[-1] < 0.6 * losses[0]
    assert all(np.isfinite(losses))


@pytest.mark.parametrize(
    "optim",
    [
        OptimConfig(lora={"rank": 4}, warmup_ratio=0),
        OptimConfig(freeze_vision=True, gradient_checkpointing=True, warmup_ratio=0),
        OptimConfig(dtype="bfloat16", warmup_ratio=0),
    ],
    ids=["lora", "frozen-vision+checkpointing", "bf16"],
)
def test_learner_options_train_the_right_parameters(setup, optim):
    import copy

    from streamreason.rl.learner import LoraConfig

    model, processor, encoder, rows = setup
    if isinstance(optim.lora, dict):
        optim.lora = LoraConfig(**optim.lora)
    model = copy.deepcopy(model).to(getattr(torch, optim.dtype))
    with EnvPool(ENV, in_process=True) as pool:
        train, _ = sft_rows(rows[:1], pool=pool, encoder=encoder, cfg=RolloutConfig(env=ENV))
    for r in train:
        r.advantage = 1.0
    learner = Learner(model, optim, GRPOConfig(), total_steps=2, pad_id=processor.tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    metrics = learner.grpo_update(train)
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0, metrics
    changed = {n for n, p in learner.model.named_parameters() if not torch.equal(p, before[n])}
    if optim.lora.rank:
        assert changed and all("lora_" in n for n in changed)
    elif optim.freeze_vision:
        assert changed and not any(".visual." in n for n in changed)
    else:
        assert any(".visual." in n for n in changed) and any("language_model" in n for n in changed)


def _short_rollout(setup, rows, evict_block):
    """G = 2 trajectories of 8-token turns per row, window 3, with the tiny model (seed 0)."""
    model, processor, encoder, _ = setup
    cfg = RolloutConfig(env=ENV, memory=MemoryConfig(window_chunks=3, evict_block=evict_block),
                        protocol=ProtocolConfig(think_budget=4, max_new_tokens=8), group_size=2)  # fmt: skip
    with EnvPool(ENV, in_process=True) as pool:
        trajs, _ = run_rollouts(rows, pool=pool, engine=TransformersEngine(model, processor.tokenizer, seed=0),
                                encoder=encoder, cfg=cfg)  # fmt: skip
    return trajs


@pytest.mark.parametrize("update", ["grpo", "sft"])
def test_shared_vision_features_give_the_same_update(setup, update):
    """The tower once per distinct chunk (VisionCache) against the tower in every row's forward:
    same log-probs, same gradients on every parameter (vision tower included), same metrics."""
    import copy

    model, processor, _, rows = setup
    trajs = _short_rollout(setup, rows[:2], evict_block=1)
    train = build_rows(trajs, advantages=[1.0, -1.0, 0.5, -0.5])
    chunks = [v for r in train for v in r.videos]
    assert len({id(v) for v in chunks}) < len(chunks) / 3  # rows and trajectories share chunks
    grads, metrics, logps = [], [], []
    for share in (False, True):
        learner = Learner(copy.deepcopy(model), OptimConfig(lr=1e-3, warmup_ratio=0), GRPOConfig(micro_batch_rows=3),
                          total_steps=1, pad_id=processor.tokenizer.pad_token_id, share_vision=share)  # fmt: skip
        logps.append(learner.logprobs(train))
        learner._step = lambda *_: {}  # keep the gradients for comparison
        calls = []
        learner.model.model.visual.register_forward_hook(lambda m, i, o, calls=calls: calls.append(1))
        if update == "grpo":
            metrics.append(learner.grpo_update(train))
        else:
            metrics.append(learner.sft_update(train))
        assert len(calls) == (1 if share else -(-len(train) // 3))  # tower calls: once vs per micro-batch
        grads.append({n: p.grad for n, p in learner.model.named_parameters()})
    for a, b in zip(*logps):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert metrics[0].keys() == metrics[1].keys()
    for k in metrics[0]:
        assert metrics[0][k] == pytest.approx(metrics[1][k], rel=1e-4, abs=1e-6), k
    assert any(".visual." in n and g is not None and g.abs().sum() > 0 for n, g in grads[1].items())
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_a_nonfinite_loss_skips_the_update_and_is_counted(setup):
    """A NaN advantage makes the loss NaN: the optimizer step is skipped and counted, weights
    and optimizer state stay as they were, and the next finite update trains."""
    import copy

    model, processor, _, rows = setup
    trajs = _short_rollout(setup, rows[:1], evict_block=2)
    learner = Learner(copy.deepcopy(model), OptimConfig(lr=1e-3, warmup_ratio=0), GRPOConfig(mini_batches=1),
                      total_steps=4, pad_id=processor.tokenizer.pad_token_id)  # fmt: skip
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    for bad in (math.nan, math.inf):
        metrics = learner.grpo_update(build_rows(trajs, advantages=[1.0, bad]))
        assert metrics["skipped_nonfinite"] == 1.0 and not math.isfinite(metrics["pg_loss"])
        assert not learner.optimizer.state  # AdamW never stepped
        for n, p in learner.model.named_parameters():
            torch.testing.assert_close(p, before[n], rtol=0, atol=0, msg=n)
    metrics = learner.grpo_update(build_rows(trajs, advantages=[1.0, -1.0]))
    assert metrics["skipped_nonfinite"] == 0.0 and math.isfinite(metrics["pg_loss"])
    assert any(not torch.equal(p, before[n]) for n, p in learner.model.named_parameters())
