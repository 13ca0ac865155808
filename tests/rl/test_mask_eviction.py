"""``memory.eviction=mask`` (ThinkStream's RCSM): one row per trajectory, exactly what the rollout saw.

The tiny model in fp32 on real MP4s: the transformers engine generates under the span mask, the
learner scores the one-row-per-trajectory batch under the same mask, and the two log-probs agree.
Two tests guard the mask's meaning: the one-row forward equals ThinkStream's inference done
literally (the evicted chunk's KV entries deleted from the cache, the rest kept, positions kept),
and the rows' rotary positions are each turn's inference positions (never rebased).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import Learner, OptimConfig
from streamreason.rl.rows import build_rows, collate
from streamreason.rollout.attention import mrope_positions
from streamreason.rollout.engine import SamplingConfig, TransformersEngine
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import ProtocolConfig

ENV = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112, max_chunks=8)


def _rollout(setup, window, block, group=2):
    model, processor, encoder, rows = setup
    cfg = RolloutConfig(env=ENV, memory=MemoryConfig(window_chunks=window, evict_block=block, eviction="mask"),
                        protocol=ProtocolConfig(think_budget=4, max_new_tokens=10),
                        sampling=SamplingConfig(temperature=0.8, top_p=0.9, top_k=30), group_size=group)  # fmt: skip
    with EnvPool(ENV, in_process=True) as pool:
        trajs, failures = run_rollouts(rows, pool=pool, engine=TransformersEngine(model, processor.tokenizer, seed=0),
                                       encoder=encoder, cfg=cfg)  # fmt: skip
    assert not failures
    return trajs


def _learner(setup):
    model, processor, _, _ = setup
    return Learner(model, OptimConfig(), GRPOConfig(micro_batch_rows=3), total_steps=1,
                   pad_id=processor.tokenizer.pad_token_id, temperature=0.8)  # fmt: skip


@pytest.mark.parametrize("window, block", [(3, 1), (2, 2)])
def test_one_row_per_trajectory_with_the_rollout_logprobs(setup, window, block):
    trajs = _rollout(setup, window, block)
    assert all(len(t.turns) > window + block for t in trajs)  # evictions happened
    rows = build_rows(trajs, advantages=list(range(len(trajs))))
    assert len(rows) == len(trajs)  # one row per trajectory
    for r, t in zip(rows, trajs):
        assert len(r) == len(t.turns[-1].prompt_ids) + len(
            t.turns[-1].response_ids
        )  # the trajectory's length
        evicted = t.turns[-1].chunk_index - window + 1  # chunks evicted by the last turn, at least
        assert len(r.masked_spans) >= evicted // block * block > 0
        assert r.num_loss_tokens == sum(int(turn.response_mask.sum()) for turn in t.turns)
    diffs = [
        np.abs(lp - r.old_logprobs)[r.loss_mask > 0] for r, lp in zip(rows, _learner(setup).logprobs(rows))
    ]
    worst = float(np.concatenate(diffs).max())
    print(f"eviction=mask, W={window}, B={block}: max |learner - rollout| log-prob {worst:.2e}")
    assert worst < 1e-5


def _embeddings(model, row, pad_id):
    """The row's input embeddings with its video features in place, and its rotary positions."""
    batch = collate([row], pad_id)
    base = model.model
    emb = base.get_input_embeddings()(batch["input_ids"])
    feats = torch.cat(
        base.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"]).pooler_output
    )
    emb = emb.masked_scatter(
        (batch["input_ids"] == model.config.video_token_id)[..., None].expand_as(emb), feats
    )
    return emb, mrope_positions(model, batch)


@torch.no_grad()
def test_the_masked_row_is_dropping_the_evicted_kv(setup):
    """ThinkStream's inference, literally: run the context up to an eviction, delete the evicted
    chunk's entries from the KV cache (every other entry kept as computed, positions kept), go
    on. The one-row span-masked forward must give the same log-probs; it would not if the span
    leaked to later tokens, if the earlier tokens lost it, or if positions were rebased."""
    model, processor = setup[0], setup[1]
    row = build_rows(_rollout(setup, window=2, block=1, group=1)[:1])[0]
    (start, end, evict), (_, _, stop) = row.masked_spans[:2]  # chunk 0, evicted at `evict`; the next eviction
    emb, pos = _embeddings(model, row, processor.tokenizer.pad_token_id)
    lm = model.model.language_model
    first = lm(inputs_embeds=emb[:, :evict], position_ids=pos[:, :, :evict], use_cache=True)
    cache = first.past_key_values
    for layer in cache.layers:  # drop chunk 0's keys and values
        layer.keys = torch.cat([layer.keys[:, :, :start], layer.keys[:, :, end:]], 2)
        layer.values = torch.cat([layer.values[:, :, :start], layer.values[:, :, end:]], 2)
    kept = evict - (end - start)
    second = lm(inputs_embeds=emb[:, evict:stop], position_ids=pos[:, :, evict:stop], past_key_values=cache,
                attention_mask=torch.ones(1, kept + stop - evict, dtype=torch.long))  # fmt: skip
    hidden = torch.cat([first.last_hidden_state, second.last_hidden_state], 1)
    logits = model.lm_head(hidden).float() / 0.8
    ids = torch.from_numpy(row.input_ids[:stop])
    expected = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[1:, None])[:, 0].numpy()
    (masked,) = _learner(setup).logprobs([row])
    scored = row.loss_mask[:stop] > 0
    scored[0] = False
    after = scored & (np.arange(stop) >= evict)
    assert after.any() and (scored & (np.arange(stop) < evict)).any()
    worst = float(np.abs(masked[1:stop] - expected)[scored[1:]].max())
    print(f"span mask vs dropped KV (ThinkStream's eviction): max |difference| {worst:.2e}")
    assert worst < 1e-5
    # the mask is what hides it: without the spans the later tokens see chunk 0 and differ
    (leaky,) = _learner(setup).logprobs([replace(row, masked_spans=[])])
    assert np.abs(leaky[1:stop] - expected)[after[1:]].max() > 1e-4


def test_positions_are_never_rebased(setup):
    model = setup[0]
    traj = _rollout(setup, window=2, block=1, group=1)[0]
    row = build_rows([traj])[0]
    full = mrope_positions(model, collate([row], setup[1].tokenizer.pad_token_id))[:, 0]
    assert row.masked_spans  # chunks were evicted
    for t in range(
        len(traj.turns)
    ):  # each turn's own prompt, as the engine saw it: a prefix, the same positions
        inputs = traj.model_inputs(t)
        alone = mrope_positions(model, inputs)[:, 0, : len(traj.turns[t].prompt_ids)]
        assert torch.equal(alone, full[:, : alone.shape[1]]), f"turn {t}"


def test_the_thinkstream_recipe_trains_with_mask_eviction(small_overrides, tmp_path):
    """``recipes/thinkstream_rlvr.yaml`` (eviction=mask, B=1) end to end on the tiny model: two
    GRPO steps whose rows are one per trajectory, trained under the span mask."""
    from pathlib import Path

    import streamreason.recipes
    from streamreason.cli import main
    from streamreason.rl.metrics import read_metrics

    recipe = str(Path(streamreason.recipes.__file__).parent / "thinkstream_rlvr.yaml")
    run = tmp_path / "ts"
    main(["train", recipe, *small_overrides, f"trainer.run_dir={run}", "trainer.steps=2", "trainer.checkpoint_every=0",
          "rollout.memory.window_chunks=2", "engine.dtype=float32", "optim.dtype=float32", "optim.gradient_checkpointing=false",
          "rl.filter_zero_variance_groups=false"])  # fmt: skip
    steps = [m for m in read_metrics(run / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(np.isfinite(m["loss"]) for m in steps)
    assert (run / "final" / "model.safetensors").is_file()
