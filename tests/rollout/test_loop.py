"""The rollout loop on the tiny model over real synthetic MP4s."""

import json

import numpy as np
import pytest
import torch

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import synthesize
from streamreason.errors import VideoError
from streamreason.rewards.composite import CompositeReward, RewardConfig
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.engine import TransformersEngine
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import ProtocolConfig, get_protocol
from streamreason.types import StreamRow, read_rows

ENV = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112, max_chunks=10)
CFG = RolloutConfig(env=ENV, memory=MemoryConfig(window_chunks=3, evict_block=2),
                    protocol=ProtocolConfig(think_budget=4, max_new_tokens=8), group_size=3)  # fmt: skip


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = synthesize(tmp_path_factory.mktemp("synth"), n=3, seed=0, min_seconds=6, max_seconds=8)
    rows, errors = read_rows(path)
    assert not errors
    return rows


@pytest.fixture(scope="module")
def rollout(rows, tiny_policy):
    model, processor = tiny_policy
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    engine = TransformersEngine(model, processor.tokenizer, seed=0)
    bad = StreamRow(id="missing", video_path="/nonexistent/clip.mp4", queries=rows[0].queries)
    with EnvPool(ENV, in_process=True) as pool:
        trajs, failures = run_rollouts(
            [rows[0], bad, rows[1]], pool=pool, engine=engine, encoder=encoder, cfg=CFG
        )
    return trajs, failures, encoder, model


def test_groups_turns_and_failures(rollout, rows):
    trajs, failures, _, _ = rollout
    assert [(t.row.id, t.group_index) for t in trajs] == [
        (r.id, g) for r in (rows[0], rows[1]) for g in range(3)
    ]
    assert len(failures) == 1 and failures[0].row_id == "missing"
    assert isinstance(failures[0].error, VideoError) and "/nonexistent/clip.mp4" in str(failures[0].error)
    for t in trajs:
        n = min(10, int(np.ceil(t.row.meta["duration_s"])))
        assert [turn.chunk_index for turn in t.turns] == list(range(n))


def test_turn_records_are_consistent(rollout):
    trajs, _, encoder, _ = rollout
    for traj in trajs:
        for k, turn in enumerate(traj.turns):
            r = len(turn.response_ids)
            assert 1 <= r <= 8 and len(turn.logprobs) == len(turn.response_mask) == r
            assert np.all(turn.logprobs <= 0)
            assert len(turn.prompt_ids) == len(turn.mm_token_type_ids) == turn.memory.context_tokens
            cutoff = CFG.memory.video_cutoff(k)
            assert turn.video_chunks == list(range(cutoff, k + 1))
            assert (turn.finish_reason == "stop") == (int(turn.response_ids[-1]) == encoder.end_of_turn_id)
            assert turn.parsed == encoder.protocol.parse(turn.text, turn.finish_reason == "stop")


def test_queries_enter_at_their_chunk(rollout):
    trajs, _, encoder, _ = rollout
    for traj in trajs:
        for turn in traj.turns:
            text = encoder.tokenizer.decode(turn.prompt_ids.tolist())
            for q in traj.row.queries:
                shown = f"(asked at {q.time_s:.1f}s): {q.text}" in text
                assert shown == (int(q.time_s // ENV.chunk_seconds) <= turn.chunk_index), (
                    q,
                    turn.chunk_index,
                )


def test_prompt_grows_by_exactly_the_last_turn_inside_a_block(rollout):
    trajs, _, _, _ = rollout
    for traj in trajs:
        for prev, cur in zip(traj.turns, traj.turns[1:]):
            if prev.block_start == cur.block_start:
                grown = np.concatenate([prev.prompt_ids, prev.response_ids, prev.env_ids])
                assert np.array_equal(cur.prompt_ids[: len(grown)], grown)


def test_model_inputs_reproduce_the_rollout_logprobs(rollout):
    trajs, _, _, model = rollout
    worst = 0.0
    for traj in trajs[:2]:
        for i in (0, len(traj.turns) // 2, len(traj.turns) - 1):
            turn = traj.turns[i]
            with torch.no_grad():
                logits = model(**traj.model_inputs(i)).logits[0]
            p = len(turn.prompt_ids)
            lp = torch.log_softmax(logits[p - 1 : -1] / CFG.sampling.temperature, -1)
            ref = lp.gather(-1, torch.from_numpy(turn.response_ids.astype(np.int64))[:, None])[:, 0]
            worst = max(worst, (ref - torch.from_numpy(turn.logprobs)).abs().max().item())
    assert worst < 1e-4, worst


def test_episode_feeds_the_rewards(rollout):
    trajs, _, _, _ = rollout
    reward = CompositeReward(RewardConfig())
    for traj in trajs:
        ep = traj.episode()
        assert [t.chunk_index for t in ep.turns] == [t.chunk_index for t in traj.turns]
        res = reward(ep)
        assert set(res.components) == {"format", "timing", "correctness", "efficiency"}
        assert 0.0 <= res.total <= 1.0
        json.dumps(res.components)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_vl"])
def test_other_qwen_vl_families_roll_out_exactly(arch, rows, tmp_path):
    """Qwen2-VL and Qwen3-VL checkpoints work wherever the default Qwen2.5-VL one does."""
    from streamreason.modeling import build_tiny_model, load_policy

    model, processor = load_policy(build_tiny_model(tmp_path / arch, arch=arch))
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    env = EnvConfig(
        min_pixels=64 * 64, max_pixels=128 * 128, max_chunks=4, resize_factor=encoder.frame_factor
    )
    cfg = RolloutConfig(
        env=env, memory=MemoryConfig(window_chunks=2), protocol=ProtocolConfig(max_new_tokens=6)
    )
    with EnvPool(env, in_process=True) as pool:
        (traj,), failures = run_rollouts([rows[0]], pool=pool, engine=TransformersEngine(model, processor.tokenizer),
                                         encoder=encoder, cfg=cfg, group_size=1)  # fmt: skip
    assert not failures and len(traj.turns) == 4
    last = traj.turns[-1]
    assert last.video_chunks == [2, 3] and last.memory.visual_tokens > 0
    with torch.no_grad():
        logits = model(**traj.model_inputs(3)).logits[0]
    p = len(last.prompt_ids)
    ref = torch.log_softmax(logits[p - 1 : -1], -1).gather(
        -1, torch.from_numpy(last.response_ids.astype(np.int64))[:, None]
    )
    assert torch.allclose(ref[:, 0], torch.from_numpy(last.logprobs), atol=1e-4)


def test_chunks_are_shared_by_a_stream_and_identified_by_content(rollout):
    """A chunk is encoded once per stream (its G trajectories hold the same segment), and its
    content id, what vLLM keys its caches by, differs between chunks and streams and survives
    a copy of the frames."""
    from streamreason.rollout.chat import VideoSegment

    trajs, _, encoder, _ = rollout
    same_row = [t for t in trajs if t.row.id == trajs[0].row.id]
    assert all(t.videos[k] is same_row[0].videos[k] for t in same_row for k in t.videos)
    chunks = {id(v): v for t in trajs for v in t.videos.values()}.values()
    assert len(chunks) == sum(len(t.videos) for t in trajs) // 3
    # one id per distinct content (a synthetic clip may repeat a chunk exactly)
    assert len({v.uid for v in chunks}) == len({(v.frames.tobytes(), v.fps) for v in chunks}) > 1
    v = same_row[0].videos[0]
    copy = VideoSegment(v.ids, v.mm_token_type_ids, v.tensors, frames=v.frames.copy(), fps=v.fps)
    assert copy.uid == v.uid
    assert VideoSegment(v.ids, v.mm_token_type_ids, v.tensors, frames=v.frames, fps=2 * v.fps).uid != v.uid


def test_a_killed_env_worker_costs_the_rollout_nothing(rollout, rows, tiny_policy, ray_cluster):
    """SIGKILL of the env worker holding both good rows, mid-rollout: Ray restarts it, the pool
    replays its envs, and the trajectories equal those of the undisturbed in-process rollout."""
    want, want_failures, encoder, _ = rollout
    model, processor = tiny_policy
    engine = TransformersEngine(model, processor.tokenizer, seed=0)
    bad = StreamRow(id="missing", video_path="/nonexistent/clip.mp4", queries=rows[0].queries)
    turns = []

    def kill_once(traj, turn):
        turns.append(turn)
        if len(turns) == 10:  # in the 2nd lockstep step; rows 0 and 2 went to worker 0
            pool.kill_worker(0)

    with EnvPool(ENV, num_workers=2) as pool:
        got, failures = run_rollouts([rows[0], bad, rows[1]], pool=pool, engine=engine, encoder=encoder,
                                     cfg=CFG, on_turn=kill_once)  # fmt: skip
        assert pool.restarts == 1
    assert [f.row_id for f in failures] == [f.row_id for f in want_failures] == ["missing"]
    assert [(t.row.id, t.group_index) for t in got] == [(t.row.id, t.group_index) for t in want]
    for a, b in zip(got, want, strict=True):
        assert [t.text for t in a.turns] == [t.text for t in b.turns]
        for ta, tb in zip(a.turns, b.turns, strict=True):
            np.testing.assert_array_equal(ta.prompt_ids, tb.prompt_ids)
            np.testing.assert_array_equal(ta.response_ids, tb.response_ids)


def test_thinkstream_budget_rule_through_the_loop(rows, tiny_policy):
    """ThinkStream's rule (recipes/thinkstream_rlvr.yaml): the budget counts every generated token
    and the last token is a forced end of turn, so every turn ends; forced tokens are masked out
    of the training rows, and the sampled ones keep their exact log-probs."""
    from streamreason.rl.rows import build_rows

    model, processor = tiny_policy
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    protocol = ProtocolConfig(
        think_budget=4, think_budget_counts="generated", force_end_of_turn=True, max_new_tokens=8
    )
    cfg = RolloutConfig(
        env=ENV, memory=MemoryConfig(window_chunks=3, evict_block=2), protocol=protocol, group_size=2
    )
    with EnvPool(ENV, in_process=True) as pool:
        trajs, _ = run_rollouts([rows[0]], pool=pool, engine=TransformersEngine(model, processor.tokenizer, seed=0),
                                encoder=encoder, cfg=cfg)  # fmt: skip
    close = encoder.think_ids()[1][0]
    turns = [t for traj in trajs for t in traj.turns]
    assert all(t.finish_reason == "stop" and t.response_ids[-1] == encoder.end_of_turn_id for t in turns)
    full = [t for t in turns if len(t.response_ids) == 8]
    assert full and all(t.response_mask[-1] == 0 for t in full)  # the forced end of turn
    for t in turns:  # </think> forced at position 4 unless sampled before
        ids = t.response_ids.tolist()
        if close not in ids[:4] and len(ids) > 5:
            assert ids[4] == close and t.response_mask[4] == 0
        assert t.think_tokens <= 3
    n_forced = sum(int((t.response_mask == 0).sum()) for t in turns)
    assert (
        sum(int((r.loss_mask > 0).sum()) for r in build_rows(trajs))
        == sum(len(t.response_ids) for t in turns) - n_forced
    )
    traj, i = trajs[0], len(trajs[0].turns) - 1
    with torch.no_grad():
        logits = model(**traj.model_inputs(i)).logits[0]
    turn = traj.turns[i]
    p, mask = len(turn.prompt_ids), turn.response_mask.astype(bool)
    ref = torch.log_softmax(logits[p - 1 : -1], -1).gather(
        -1, torch.from_numpy(turn.response_ids.astype(np.int64))[:, None]
    )[:, 0]
    assert torch.allclose(ref[mask], torch.from_numpy(turn.logprobs)[mask], atol=1e-4)
