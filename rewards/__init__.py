"""Verifiable rewards for streaming video reasoning: what the policy said, and when.

A reward is a plain callable ``fn(episode: Episode, **params) -> float | dict[str, float]``
registered by name (:mod:`~streamreason.rewards.registry`) or loaded from a
``"file.py:fn"`` spec; :class:`CompositeReward` sums the configured ones by weight.
"""

from streamreason.answers import answer_kind, answers_match, parse_answer
from streamreason.rewards.builtin import (
    correctness_reward,
    efficiency_reward,
    format_reward,
    response_count_reward,
    timing_asymmetric_reward,
    timing_reward,
)
from streamreason.rewards.composite import THINKSTREAM_WEIGHTS, CompositeReward, RewardConfig, RewardResult
from streamreason.rewards.outcomes import QueryOutcome, query_outcomes
from streamreason.rewards.registry import RewardFn, get_reward, list_rewards, register_reward
from streamreason.rewards.thinkstream import (
    literal_answer,
    thinkstream_correctness_reward,
    thinkstream_efficiency_reward,
    thinkstream_outcomes,
    thinkstream_timing_reward,
)
from streamreason.rewards.vst import vst_correctness_reward

__all__ = [
    "THINKSTREAM_WEIGHTS",
    "CompositeReward",
    "QueryOutcome",
    "RewardConfig",
    "RewardFn",
    "RewardResult",
    "answer_kind",
    "answers_match",
    "correctness_reward",
    "efficiency_reward",
    "format_reward",
    "get_reward",
    "list_rewards",
    "literal_answer",
    "parse_answer",
    "query_outcomes",
    "register_reward",
    "response_count_reward",
    "thinkstream_correctness_reward",
    "thinkstream_efficiency_reward",
    "thinkstream_outcomes",
    "thinkstream_timing_reward",
    "timing_asymmetric_reward",
    "timing_reward",
    "vst_correctness_reward",
]
