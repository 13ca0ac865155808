"""The memory-policy registry, and the test template for a new memory policy.

A new policy's tests copy this module: register the policy (or import its module), select it by
name as a recipe would, and run it through the real loop with the tiny model, asserting what its
prompts hold. The toy policy here keeps all text and only the latest chunk's video.
"""

import pytest

from streamreason.config import load_config
from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import synthesize
from streamreason.errors import ConfigError
from streamreason.rollout.chat import ChatEncoder, find_subsequence
from streamreason.rollout.engine import TransformersEngine
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import (
    Memory,
    MemoryConfig,
    MemoryStats,
    Prompt,
    VisualWindowMemory,
    make_memory,
    register_memory,
)
from streamreason.rollout.protocol import ProtocolConfig, get_protocol
from streamreason.stack import max_videos
from streamreason.types import read_rows


@register_memory("last_chunk")
class LastChunkMemory(Memory):
    """All text; the video of the latest chunk only (earlier chunks keep their time marker,
    queries and reply). Prompts do not extend each other, so every turn is its own row (the
    default :meth:`Memory.block_start`)."""

    def __init__(self, cfg, system_ids):
        super().__init__(cfg, system_ids)
        self.turns = []  # [head, video, tail, reply]

    def add_chunk(self, head, video, tail, has_query=True):
        self.turns.append([list(head), video, list(tail), None])

    def add_reply(self, reply_ids):
        self.turns[-1][3] = list(reply_ids)

    def prompt(self) -> Prompt:
        ids = list(self.system_ids)
        for head, _, tail, reply in self.turns[:-1]:
            ids += head + tail + reply
        head, video, tail, _ = self.turns[-1]
        types = [0] * (len(ids) + len(head)) + list(video.mm_token_type_ids) + [0] * len(tail)
        ids += head + video.ids + tail
        turn = len(self.turns) - 1
        stats = MemoryStats(len(ids), video.visual_tokens, shared_prefix_tokens=0, video_chunks=1)
        return Prompt(ids, types, [video], [turn], self.block_start(self.cfg, turn), stats)

    @classmethod
    def video_cutoff(cls, cfg, turn):
        return turn

    @classmethod
    def max_videos(cls, cfg, max_chunks):
        return 1


ENV = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112, max_chunks=4)


def test_a_recipe_selects_a_policy_by_name():
    cfg = load_config(None, ["rollout.memory.name=last_chunk"])
    assert cfg.rollout.memory.policy is LastChunkMemory and max_videos(cfg) == 1
    assert isinstance(make_memory(cfg.rollout.memory, [1, 2]), LastChunkMemory)
    default = load_config(None, ["rollout.memory.window_chunks=4", "rollout.memory.evict_block=3"])
    assert default.rollout.memory.policy is VisualWindowMemory and max_videos(default) == 4 + 3 - 1


def test_unknown_policy_is_a_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"rollout.memory.name='nope'.*'last_chunk', 'visual_window'"):
        load_config(None, ["rollout.memory.name=nope"])
    with pytest.raises(ConfigError, match="visual_window"):
        MemoryConfig(name="nope")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):

        @register_memory("visual_window")
        class Other(LastChunkMemory):
            pass


def test_toy_policy_through_the_rollout_loop(tmp_path, tiny_policy):
    rows, errors = read_rows(synthesize(tmp_path, n=1, seed=0, min_seconds=4, max_seconds=4))
    assert not errors
    model, processor = tiny_policy
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    cfg = RolloutConfig(env=ENV, memory=MemoryConfig(name="last_chunk"),
                        protocol=ProtocolConfig(max_new_tokens=6), group_size=2)  # fmt: skip
    engine = TransformersEngine(model, processor.tokenizer, seed=0)
    with EnvPool(ENV, in_process=True) as pool:
        trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg)
    assert not failures and len(trajs) == 2
    for traj in trajs:
        assert len(traj.turns) == 4
        for k, turn in enumerate(traj.turns):
            video = traj.videos[k]
            assert turn.video_chunks == [k] and turn.block_start == k and turn.memory.video_chunks == 1
            assert (turn.mm_token_type_ids == 2).sum() == video.mm_token_type_ids.count(2)
            if k == 0:
                continue
            # the previous chunk's video leaves; its time marker, queries and reply stay in place,
            # then come this chunk's user turn and video (the prompt's only one)
            prev, prev_video = traj.turns[k - 1], traj.videos[k - 1]
            ids, before = turn.prompt_ids.tolist(), prev.prompt_ids.tolist()
            at = find_subsequence(before, prev_video.ids)
            kept = (
                before[:at] + before[at + len(prev_video.ids) :] + prev.response_ids.tolist() + prev.env_ids
            )
            assert ids[: len(kept)] == kept
            assert ids.count(video.ids[0]) == 1 and find_subsequence(ids, video.ids) > len(kept)
