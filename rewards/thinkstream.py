"""ThinkStream's reward rules as ThinkStream's code has them.

Transcribed from CASIA-IVA-Lab/ThinkStream, ``thinkstream/trainer/grpo.py`` (``calc_rewards``
and the helpers above it; line numbers are of that file), for ``recipes/thinkstream_rlvr.yaml``:

* ``thinkstream_correctness``: ``_extract_literal_answer`` (l. 112) reads every response
  (``_RESPONSE_RE``, l. 127: the text after ``<response>``, wherever it is in the turn); the
  first that is a literal of any kind is the answer (``_scan_responses_for_answer``, l. 130);
  it must equal the ground truth's literal (``_compute_correctness_reward``, l. 171), and a
  ground truth that is not a literal scores 0.
* ``thinkstream_timing``: that answer's chunk against ``gt_chunk = int(answer_time_s / cs)``
  clamped to the turns (l. 541-542), slack ``int(slack_seconds / cs)`` (l. 565), window
  ``window_chunks`` (``_compute_time_reward``, l. 155).
* ``thinkstream_efficiency``: think-length factor (``_compute_think_length_factor``, l. 91)
  on the mean length of the think span *with* its tags over the turns that have one
  (``_collect_think_lengths``, l. 60) × the response-count factor (``_compute_num_response_reward``,
  l. 180) on every ``<response>`` match.

The format reward needs no variant: the parser's ``format_ok`` is ThinkStream's
``_check_chunk_format`` (l. 47; :meth:`streamreason.rollout.protocol.Protocol.parse`), so the
built-in ``format`` is ThinkStream's ``_compute_format_reward`` (l. 52).

ThinkStream scores one query per trajectory (``conversations[1]``, l. 526). With several, the
responses are split between queries by :func:`~streamreason.rewards.outcomes.attributed_responses`
(a turn with a ``<response>`` match is a response) and the per-query scores are averaged, as the
built-ins do; for one query the values are ThinkStream's. These rewards read the turn text
(``TurnOutcome.text``) and raise ``ValueError`` on a turn without it, or when the episode has
no query to score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamreason.rewards.builtin import _count_factor, _mean
from streamreason.rewards.outcomes import attributed_responses
from streamreason.rewards.registry import register_reward
from streamreason.types import Episode, Query, TurnOutcome

RESPONSE_RE = re.compile(r"<response>(.*?)(?:<\|im_end\|>|$)", re.DOTALL)
"""ThinkStream's ``_RESPONSE_RE`` (grpo.py l. 127), verbatim."""
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
"""The think span ThinkStream measures (``_collect_think_lengths``, grpo.py l. 75)."""


def literal_answer(text: str) -> str | None:
    """ThinkStream's ``_extract_literal_answer`` (grpo.py l. 112), verbatim.

    ``text`` stripped must be a letter ``A``-``E`` (upper case), ``(A)``, ``A.``, ``yes``/``no``
    (any case, returned lower case) or one digit ``0``-``9``; anything else gives None.
    """
    text = text.strip()
    if re.fullmatch(r"[A-E]", text):
        return text
    if re.fullmatch(r"\([A-E]\)", text):
        return text[1]
    if re.fullmatch(r"[A-E]\.", text):
        return text[0]
    if text.lower() in {"yes", "no"}:
        return text.lower()
    if re.fullmatch(r"[0-9]", text):
        return text
    return None


@dataclass(frozen=True)
class ThinkStreamOutcome:
    """One query as ThinkStream's ``_scan_responses_for_answer`` (grpo.py l. 130) sees it.

    Attributes:
        query: the query.
        num_responses: ``<response>`` matches in its turns (:data:`RESPONSE_RE`).
        answer: the first match that is a literal (:func:`literal_answer`), or None.
        response_chunk: the chunk of that answer, or None.
    """

    query: Query
    num_responses: int
    answer: str | None
    response_chunk: int | None


def _text(turn: TurnOutcome) -> str:
    if turn.text is None:
        raise ValueError(
            f"turn {turn.chunk_index} has no text; ThinkStream's rewards read the decoded turn "
            "(TurnOutcome.text)"
        )
    return turn.text


def thinkstream_outcomes(episode: Episode) -> list[ThinkStreamOutcome]:
    """One :class:`ThinkStreamOutcome` per query, in order of ``time_s``.

    Raises:
        ValueError: a turn has no ``text``.
    """
    texts = {id(t): _text(t) for t in episode.turns}
    outcomes = []
    for q, turns in attributed_responses(episode, lambda t: RESPONSE_RE.search(texts[id(t)]) is not None):
        count, answer, chunk = 0, None, None
        for t in turns:
            for m in RESPONSE_RE.finditer(texts[id(t)]):
                count += 1
                if answer is None:
                    answer = literal_answer(m.group(1))
                    chunk = None if answer is None else t.chunk_index
        outcomes.append(ThinkStreamOutcome(q, count, answer, chunk))
    return outcomes


@register_reward("thinkstream_correctness")
def thinkstream_correctness_reward(episode: Episode) -> float:
    """ThinkStream's correctness (``_compute_correctness_reward``, grpo.py l. 171).

    Per query: 1 if its answer (:func:`thinkstream_outcomes`) equals ``literal_answer(gt)``,
    else 0 (also when the ground truth is not a literal, e.g. ``"12"`` or ``"red"``). Averaged
    over the queries with a ground truth.

    Raises:
        ValueError: no query has a ground-truth answer, or a turn has no text.
    """
    scores = []
    for o in thinkstream_outcomes(episode):
        if o.query.answer is None:
            continue
        gt = literal_answer(o.query.answer)
        scores.append(1.0 if o.answer and gt is not None and o.answer == gt else 0.0)
    return _mean(scores, "no query has a ground-truth answer")


@register_reward("thinkstream_timing")
def thinkstream_timing_reward(episode: Episode, slack_seconds: float = 3.0, window_chunks: int = 5) -> float:
    """ThinkStream's time reward (``_compute_time_reward``, grpo.py l. 155; ``calc_rewards`` l. 541-571).

    Per query, with ``gt = min(max(int(answer_time_s / cs), 0), turns - 1)`` (cs =
    ``chunk_seconds``), ``s = int(slack_seconds / cs)`` and ``d = |response_chunk − gt|``::

        1                            if d ≤ s
        1 − (d − s) / window_chunks  if d ≤ s + window_chunks
        0                            otherwise, or without an answer (or without turns)

    No epsilon in ``int()``, unlike :func:`~streamreason.rewards.builtin.timing_reward`.
    Averaged over the queries with an ``answer_time_s``. ThinkStream's defaults:
    ``time_reward_slack=3.0``, ``time_reward_window=5`` (``thinkstream/trainer/scope.py``).

    Raises:
        ValueError: no query has an ``answer_time_s``, ``window_chunks`` < 1, or a turn has no text.
    """
    if window_chunks < 1:
        raise ValueError(f"window_chunks must be >= 1, got {window_chunks}")
    cs, n = episode.chunk_seconds, len(episode.turns)
    scores = []
    for o in thinkstream_outcomes(episode):
        if o.query.answer_time_s is None:
            continue
        if o.response_chunk is None or n == 0:
            scores.append(0.0)
            continue
        gt = max(0, min(int(o.query.answer_time_s / cs), n - 1))
        s = int(slack_seconds / cs)
        d = abs(o.response_chunk - gt)
        scores.append(1.0 if d <= s else 1.0 - (d - s) / window_chunks if d <= s + window_chunks else 0.0)
    return _mean(scores, "no query has an answer_time_s")


def think_length_factor(avg_think_len: float, target_tokens: int = 20, step_window: int = 5) -> float:
    """ThinkStream's ``_compute_think_length_factor`` (grpo.py l. 91), verbatim: 1 when
    ``avg_think_len`` ≥ ``target_tokens − step_window``, else
    ``floor(avg / step) / (floor(threshold / step) + 1)`` (with 20, 5: floor(avg / 5) / 4)."""
    if target_tokens <= 0:
        return 1.0
    step_window = max(1, step_window)
    threshold = max(0, target_tokens - step_window)
    if avg_think_len >= threshold:
        return 1.0
    if threshold == 0:
        return 1.0
    return float(int(avg_think_len // step_window)) / float(int(threshold // step_window) + 1)


@register_reward("thinkstream_efficiency")
def thinkstream_efficiency_reward(episode: Episode, target_tokens: int = 20, step_window: int = 5) -> float:
    """ThinkStream's response efficiency: think-length factor × response-count factor (grpo.py l. 556-561).

    Think length of a turn: ``think_tokens + 2`` (the span with its ``<think>``/``</think>``,
    one token each, as ``_collect_think_lengths`` re-encodes it), for the turns whose text has
    a closed span (:data:`THINK_RE`); the mean over those turns (0 when none) goes through
    :func:`think_length_factor` with ``target_tokens`` (ThinkStream: ``rollout_max_think_tokens``
    = 20) and ``step_window``. Response-count factor per query on its ``<response>`` matches
    (``_compute_num_response_reward`` with step 3, max 10: 1 → 1; 2–4 → 0.75; 5–7 → 0.5;
    8–10 → 0.25; 0 or > 10 → 0), averaged over queries.

    Raises:
        ValueError: the episode has no queries, or a turn has no text.
    """
    lengths = [t.think_tokens + 2 for t in episode.turns if THINK_RE.search(_text(t))]
    avg = sum(lengths) / len(lengths) if lengths else 0.0
    counts = [_count_factor(o.num_responses) for o in thinkstream_outcomes(episode)]
    return think_length_factor(avg, target_tokens, step_window) * _mean(counts, "the episode has no queries")
