import pytest

from streamreason.types import Episode, Query, TurnOutcome


def _make_episode(
    n_chunks: int,
    responses: dict[int, str] | None = None,
    queries: list[Query] | None = None,
    chunk_seconds: float = 1.0,
    think_tokens: int = 15,
    row_id: str = "row-1",
) -> Episode:
    """An episode of ``n_chunks`` well-formed turns, responding at the chunks keyed in ``responses``."""
    responses = responses or {}
    turns = [
        TurnOutcome(
            chunk_index=k,
            start_s=k * chunk_seconds,
            end_s=(k + 1) * chunk_seconds,
            action="response" if k in responses else "silent",
            think="...",
            think_tokens=think_tokens,
            response=responses.get(k),
            format_ok=True,
        )
        for k in range(n_chunks)
    ]
    if queries is None:
        queries = [Query("Is the light green?", time_s=0.0, answer="yes", answer_time_s=2.0)]
    return Episode(row_id=row_id, chunk_seconds=chunk_seconds, queries=queries, turns=turns)


@pytest.fixture
def make_episode():
    return _make_episode
