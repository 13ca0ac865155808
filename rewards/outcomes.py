"""Which response answers which query: the attribution every built-in reward shares.

Rules (ThinkStream scores one query per trajectory; these extend it to several):

1. A response turn belongs to the most recent query asked at or before its chunk (a query's
   chunk is ``episode.chunk_of(query.time_s)``; of queries asked in the same chunk, the later
   one in time order). Responses before the first query belong to the first query.
2. A query's answer is the first of its responses that parses as its ground truth's kind
   (:func:`~streamreason.answers.answer_kind`; ``"text"`` when it has no ground
   truth). Responses that do not parse are not answers, but still count as responses.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from streamreason.answers import answer_kind, answers_match, parse_answer
from streamreason.types import Episode, Query, TurnOutcome


@dataclass(frozen=True)
class QueryOutcome:
    """How one query fared in an episode.

    Attributes:
        query: the query.
        num_responses: response turns attributed to it, parseable or not.
        answer: the text of its answer (its first parseable response), or None.
        response_chunk: the chunk of that answer, or None.
        gt_chunk: ``chunk_of(query.answer_time_s)``, or None when the answer time is unknown.
        timing_error_s: ``(response_chunk - gt_chunk) * chunk_seconds``, seconds; negative when
            the answer came before the evidence; None when either chunk is None.
        correct: whether the answer matches the ground truth (False when there is no answer);
            None when the query has no ground-truth answer.
    """

    query: Query
    num_responses: int
    answer: str | None
    response_chunk: int | None
    gt_chunk: int | None
    timing_error_s: float | None
    correct: bool | None


def attributed_responses(
    episode: Episode, is_response: Callable[[TurnOutcome], bool] = lambda t: t.action == "response"
) -> list[tuple[Query, list[TurnOutcome]]]:
    """Each query of ``episode`` in order of ``time_s``, with the response turns that rule 1
    attributes to it (in chunk order, parseable or not). ``is_response`` says which turns are
    responses (default: the parser's action; ThinkStream's rewards: a ``<response>`` anywhere
    in the text, :mod:`streamreason.rewards.thinkstream`)."""
    queries = sorted(episode.queries, key=lambda q: q.time_s)
    ask_chunks = [episode.chunk_of(q.time_s) for q in queries]
    responses: list[list[TurnOutcome]] = [[] for _ in queries]
    for turn in episode.turns:
        if queries and is_response(turn):
            responses[max(bisect_right(ask_chunks, turn.chunk_index) - 1, 0)].append(turn)
    return list(zip(queries, responses, strict=True))


def query_outcomes(episode: Episode) -> list[QueryOutcome]:
    """One :class:`QueryOutcome` per query of ``episode``, in order of ``time_s``.

    Example: mean absolute timing error, seconds::

        errs = [abs(o.timing_error_s) for o in query_outcomes(ep) if o.timing_error_s is not None]
    """
    outcomes = []
    for q, turns in attributed_responses(episode):
        kind = "text" if q.answer is None else answer_kind(q.answer)
        answer = next((t for t in turns if parse_answer(t.response, kind) is not None), None)
        response_chunk = None if answer is None else answer.chunk_index
        gt_chunk = None if q.answer_time_s is None else episode.chunk_of(q.answer_time_s)
        error_s = None
        if response_chunk is not None and gt_chunk is not None:
            error_s = (response_chunk - gt_chunk) * episode.chunk_seconds
        correct = None
        if q.answer is not None:
            correct = answer is not None and answers_match(answer.response, q.answer)
        text = None if answer is None else answer.response
        outcomes.append(QueryOutcome(q, len(turns), text, response_chunk, gt_chunk, error_s, correct))
    return outcomes
