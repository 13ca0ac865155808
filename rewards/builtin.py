"""Built-in rewards: ThinkStream's four components and two variants.

The trajectory reward is ThinkStream's (arXiv 2603.12938):
R = 0.2·format + 0.2·time + 0.4·correctness + 0.2·efficiency; the exact rules of its
``thinkstream/trainer/grpo.py`` are :mod:`streamreason.rewards.thinkstream`. ThinkStream scores one query per
trajectory; with several, per-query scores are averaged, and responses are attributed to
queries by :mod:`streamreason.rewards.outcomes`. Every built-in returns a float in [0, 1].

Errors: rewards that average over queries raise ``ValueError`` when the episode has no query
to score (the composite reports it as a ``RewardError`` naming the row).
"""

from __future__ import annotations

import math

from streamreason.rewards.outcomes import query_outcomes
from streamreason.rewards.registry import register_reward
from streamreason.types import Episode, chunk_index


@register_reward("format")
def format_reward(episode: Episode) -> float:
    """Fraction of turns whose output had the protocol's exact format.

    ThinkStream: a turn is well formed when it matches
    ``^<think>.*?</think>(<response>.*|<silent>)<end>$``; the rollout's parser sets
    ``TurnOutcome.format_ok``. Returns 0.0 for an episode with no turns.
    """
    if not episode.turns:
        return 0.0
    return sum(t.format_ok for t in episode.turns) / len(episode.turns)


@register_reward("correctness")
def correctness_reward(episode: Episode) -> float:
    """Fraction of queries whose answer equals the ground truth.

    ThinkStream: the first response whose content parses as a literal must equal the
    ground-truth answer (parsing: :mod:`streamreason.answers`). Averaged over the
    queries that have a ground-truth answer; a query with no parseable answer scores 0.

    Raises:
        ValueError: no query has a ground-truth answer.
    """
    return _mean(
        [o.correct for o in query_outcomes(episode) if o.correct is not None],
        "no query has a ground-truth answer",
    )


@register_reward("timing")
def timing_reward(episode: Episode, slack_seconds: float = 3.0, window_chunks: int = 5) -> float:
    """ThinkStream's time reward: early and late answers are penalised alike.

    Per query, with d = |response_chunk − gt_chunk| in chunks and
    s = int(slack_seconds / chunk_seconds) slack chunks::

        1                            if d ≤ s
        1 − (d − s) / window_chunks  if d ≤ s + window_chunks
        0                            otherwise, or when the query got no parseable answer

    Averaged over the queries with a known ``answer_time_s``.

    Args:
        slack_seconds: answers within this many seconds (rounded down to whole chunks) of the
            evidence score 1.
        window_chunks: chunks past the slack over which the score falls linearly to 0.

    Raises:
        ValueError: no query has an ``answer_time_s``, or a parameter is negative.
    """
    return timing_asymmetric_reward(
        episode,
        early_slack_seconds=slack_seconds,
        early_window_chunks=window_chunks,
        slack_seconds=slack_seconds,
        window_chunks=window_chunks,
    )


@register_reward("timing_asymmetric")
def timing_asymmetric_reward(
    episode: Episode,
    early_slack_seconds: float = 0.0,
    early_window_chunks: int = 2,
    slack_seconds: float = 3.0,
    window_chunks: int = 5,
) -> float:
    """:func:`timing_reward` with a stricter side for answers before the evidence.

    An answer in a chunk before ``gt_chunk`` was given before the evidence was visible, so it
    is a guess, and a symmetric reward pays a policy for guessing early. Early answers
    (response_chunk < gt_chunk) therefore use ``early_slack_seconds`` and
    ``early_window_chunks``; on-time and late answers use ``slack_seconds`` and
    ``window_chunks`` exactly as :func:`timing_reward`. Units, range and errors as there.
    With the defaults: an answer one chunk early scores 0.5, two or more chunks early 0.
    """
    if min(early_slack_seconds, early_window_chunks, slack_seconds, window_chunks) < 0:
        raise ValueError("timing parameters must be >= 0")
    scores = []
    for o in query_outcomes(episode):
        if o.gt_chunk is None:
            continue
        if o.response_chunk is None:
            scores.append(0.0)
            continue
        d = o.response_chunk - o.gt_chunk
        slack, window = (
            (early_slack_seconds, early_window_chunks) if d < 0 else (slack_seconds, window_chunks)
        )
        scores.append(_window_score(abs(d), slack, window, episode.chunk_seconds))
    return _mean(scores, "no query has an answer_time_s")


@register_reward("efficiency")
def efficiency_reward(episode: Episode, min_think_tokens: int = 15, think_step_tokens: int = 5) -> float:
    """ThinkStream's efficiency: think-length factor × response-count factor.

    Think-length factor, on the average ``think_tokens`` over all turns (tokens; 0 when there
    are no turns): 1 if avg ≥ ``min_think_tokens``, else
    floor(avg / step) · step / (min_think_tokens + step), step = ``think_step_tokens``
    (defaults: floor(avg / 5) / 4, avg 12 → 0.5). Not ThinkStream's rule, which measures the
    span with its tags over the turns that close it
    (:func:`~streamreason.rewards.thinkstream.thinkstream_efficiency_reward`; docs/rewards.md
    says why both exist).
    Response-count factor: :func:`response_count_reward`.

    Raises:
        ValueError: the episode has no queries.
    """
    turns = episode.turns
    avg = sum(t.think_tokens for t in turns) / len(turns) if turns else 0.0
    if avg >= min_think_tokens:
        think_factor = 1.0
    else:
        think_factor = (
            math.floor(avg / think_step_tokens) * think_step_tokens / (min_think_tokens + think_step_tokens)
        )
    return think_factor * response_count_reward(episode)


@register_reward("response_count")
def response_count_reward(episode: Episode) -> float:
    """ThinkStream's response-count factor, averaged over queries.

    Per query, on n = its attributed responses (parseable or not):
    n = 1 → 1; 2–4 → 0.75; 5–7 → 0.5; 8–10 → 0.25; 0 or > 10 → 0. For a single-query
    episode this is exactly ThinkStream's factor.

    Raises:
        ValueError: the episode has no queries.
    """
    return _mean(
        [_count_factor(o.num_responses) for o in query_outcomes(episode)], "the episode has no queries"
    )


def _count_factor(n: int) -> float:
    if n == 0 or n > 10:
        return 0.0
    return 1.0 if n == 1 else 0.75 if n <= 4 else 0.5 if n <= 7 else 0.25


def _window_score(d: int, slack_seconds: float, window_chunks: int, chunk_seconds: float) -> float:
    s = chunk_index(slack_seconds, chunk_seconds)  # whole chunks of slack: 3.0 s / 0.1 s is 30, not 29
    if d <= s:
        return 1.0
    return max(0.0, 1.0 - (d - s) / window_chunks) if window_chunks else 0.0


def _mean(values: list, empty_reason: str) -> float:
    if not values:
        raise ValueError(f"nothing to score: {empty_reason}")
    return sum(values) / len(values)
