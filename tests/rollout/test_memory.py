"""What the visual-window memory keeps and drops at turn t, for several W and B."""

import pytest

from streamreason.errors import ConfigError
from streamreason.rollout.chat import VideoSegment
from streamreason.rollout.memory import MemoryConfig, VisualWindowMemory

VS, VP, VE = 900, 901, 902  # vision start, video pad, vision end
SYSTEM = [1, 2, 3]
PADS = 4


def run(cfg: MemoryConfig, turns: int, reply_len=lambda k: 3, query=lambda k: True):
    """Drive a memory for ``turns`` chunks; return each turn's prompt."""
    mem = VisualWindowMemory(cfg, SYSTEM)
    prompts = []
    for k in range(turns):
        video = VideoSegment([VS, *[VP] * PADS, VE], [0, *[2] * PADS, 0], tensors={})
        mem.add_chunk(head=[100, 200 + k], video=video, tail=[300 + k, 101], has_query=query(k))
        prompts.append(mem.prompt())
        mem.add_reply([500 + k] * reply_len(k))
    return prompts


@pytest.mark.parametrize("w, b", [(1, 1), (3, 1), (3, 2), (4, 4), (20, 1), (2, 8)])
def test_video_window_and_blocks(w, b):
    prompts = run(MemoryConfig(window_chunks=w, evict_block=b), turns=25)
    for t, p in enumerate(prompts):
        cutoff = max(0, (t - w + 1) // b * b)
        assert p.video_chunks == list(range(cutoff, t + 1)), t
        assert w <= len(p.video_chunks) <= w + b - 1 or t + 1 < w
        assert p.stats.visual_tokens == PADS * len(p.video_chunks)
        assert p.stats.video_chunks == len(p.video_chunks)
        # evicted chunks keep their time marker (head + tail), not their frames
        for k in range(t + 1):
            assert 200 + k in p.ids and 300 + k in p.ids
        assert p.ids.count(VP) == PADS * len(p.video_chunks)
        # every past reply is kept (no text cap)
        assert all(500 + k in p.ids for k in range(t))
        assert len(p.ids) == len(p.mm_token_type_ids) == p.stats.context_tokens


@pytest.mark.parametrize("w, b", [(3, 1), (3, 2), (4, 4), (2, 8)])
def test_prompt_only_grows_inside_a_block(w, b):
    cfg = MemoryConfig(window_chunks=w, evict_block=b)
    prompts = run(cfg, turns=30)
    for t in range(1, 30):
        prev, cur = prompts[t - 1], prompts[t]
        if cur.block_start == prev.block_start:
            # prompt(t) = prompt(t-1) + reply(t-1) + user(t): the previous prompt is a prefix
            assert cur.ids[: len(prev.ids)] == prev.ids
            assert cur.stats.shared_prefix_tokens == len(prev.ids)
        else:
            assert cur.block_start == t  # a new block starts exactly at an eviction
            assert cur.stats.shared_prefix_tokens < len(prev.ids)
    starts = sorted({p.block_start for p in prompts})
    assert all(s2 - s1 == b for s1, s2 in zip(starts[1:], starts[2:]))


def test_shared_prefix_after_eviction_counts_the_common_head():
    prompts = run(MemoryConfig(window_chunks=2, evict_block=1), turns=3)
    # turn 2 evicts chunk 0's video: shared = system + chunk 0's head
    assert prompts[2].stats.shared_prefix_tokens == len(SYSTEM) + 2


def test_keep_all_video_never_evicts():
    prompts = run(MemoryConfig(window_chunks=2, keep_all_video=True), turns=12)
    assert prompts[-1].video_chunks == list(range(12))
    assert {p.block_start for p in prompts} == {0}


def test_text_cap_keeps_sink_and_recent_turns():
    cfg = MemoryConfig(window_chunks=2, evict_block=1, text_sink_tokens=6, text_recent_tokens=3)
    prompts = run(cfg, turns=10)  # every reply is 3 tokens
    last = prompts[-1]
    kept = [k for k in range(9) if 500 + k in last.ids]
    # sink: the first 2 replies (6 tokens); recent: the reply before the block; the block's own turns stay
    assert kept == [0, 1, 8]
    assert all(300 + k in last.ids for k in range(10))  # queries and their markers always stay


@pytest.mark.parametrize("b", [1, 4])
def test_text_cap_bounds_the_context_in_video_length(b):
    """Chunks without a query lose their marker with their reply: the context stops growing,
    and it still only grows inside an eviction block."""
    cfg = MemoryConfig(window_chunks=3, evict_block=b, text_sink_tokens=6, text_recent_tokens=6)
    prompts = run(cfg, turns=200, query=lambda k: k % 50 == 7)  # a query every 50 chunks
    last = prompts[-1]
    kept = [k for k in range(199) if 200 + k in last.ids]
    queried = [k for k in range(200) if k % 50 == 7]
    assert all(k in kept for k in queried) and all(300 + k in last.ids for k in queried)
    assert all(500 + k in last.ids for k in (0, 1))  # sink replies with their markers
    assert len(kept) <= len(queried) + 2 + 2 + 3 + b  # queries, sink, recent, window + block
    assert max(len(p.ids) for p in prompts[100:]) <= max(len(p.ids) for p in prompts[:100]) + 4 * len(queried)
    for prev, cur in zip(prompts, prompts[1:]):
        if cur.block_start == prev.block_start:
            assert cur.ids[: len(prev.ids)] == prev.ids
    # without a cap every marker stays
    assert all(
        200 + k in run(MemoryConfig(window_chunks=3), 60, query=lambda k: False)[-1].ids for k in range(60)
    )


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="memory.window_chunks"):
        MemoryConfig(window_chunks=0)
    with pytest.raises(ConfigError, match="memory.evict_block"):
        MemoryConfig(evict_block=0)
