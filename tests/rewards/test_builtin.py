import dataclasses

import pytest

from streamreason.rewards import (
    correctness_reward,
    efficiency_reward,
    format_reward,
    get_reward,
    list_rewards,
    response_count_reward,
    timing_asymmetric_reward,
    timing_reward,
)
from streamreason.types import Query


def test_builtins_are_registered():
    assert list_rewards() == sorted(
        ["format", "correctness", "timing", "timing_asymmetric", "efficiency", "response_count"]
        + ["thinkstream_correctness", "thinkstream_timing", "thinkstream_efficiency", "vst_correctness"]
    )
    assert get_reward("timing") is timing_reward


def test_format_is_the_fraction_of_well_formed_turns(make_episode):
    ep = make_episode(4, {2: "yes"})
    ep.turns[1] = dataclasses.replace(ep.turns[1], format_ok=False)
    assert format_reward(ep) == 0.75
    assert format_reward(make_episode(0)) == 0.0


def test_correctness_averages_over_queries_with_ground_truth(make_episode):
    queries = [
        Query("Which?", 0.0, "B", 3.0),
        Query("Red?", 5.0, "yes", 7.0),
        Query("Describe it.", 6.0),  # no ground truth: not scored
    ]
    assert correctness_reward(make_episode(10, {3: "B.", 6: "no"}, queries)) == 0.5
    assert correctness_reward(make_episode(10, {3: "B.", 5: "yes"}, queries)) == 1.0
    assert correctness_reward(make_episode(10, {}, queries)) == 0.0
    with pytest.raises(ValueError, match="no query has a ground-truth answer"):
        correctness_reward(make_episode(3, {}, [Query("Describe it.", 0.0)]))


# gt chunk 2 at 1 s per chunk: s = int(3.0 / 1.0) = 3 slack chunks, then 5 chunks of decay.
@pytest.mark.parametrize("d, expected", [(0, 1.0), (3, 1.0), (4, 0.8), (7, 0.2), (8, 0.0), (9, 0.0)])
def test_timing_late(make_episode, d, expected):
    assert timing_reward(make_episode(12, {2 + d: "yes"})) == pytest.approx(expected)


def test_timing_is_symmetric(make_episode):
    queries = [Query("Red?", 0.0, "yes", 10.0)]
    assert timing_reward(make_episode(12, {6: "yes"}, queries)) == pytest.approx(0.8)  # 4 chunks early


# 2 s per chunk: s = int(3.0 / 2.0) = 1; gt at 4 s is chunk 2.
@pytest.mark.parametrize("chunk, expected", [(3, 1.0), (4, 0.8), (8, 0.0)])
def test_timing_slack_is_in_whole_chunks(make_episode, chunk, expected):
    queries = [Query("Red?", 0.0, "yes", 4.0)]
    ep = make_episode(10, {chunk: "yes"}, queries, chunk_seconds=2.0)
    assert timing_reward(ep) == pytest.approx(expected)


def test_timing_params_and_unanswered_queries(make_episode):
    assert timing_reward(make_episode(12, {4: "yes"}), slack_seconds=0.0, window_chunks=4) == 0.5
    assert timing_reward(make_episode(12, {4: "maybe"})) == 0.0  # no parseable answer
    queries = [Query("Red?", 0.0, "yes", 2.0), Query("Blue?", 0.0, "no", 2.0)]
    assert timing_reward(make_episode(12, {}, queries)) == 0.0
    with pytest.raises(ValueError, match="no query has an answer_time_s"):
        timing_reward(make_episode(4, {1: "yes"}, [Query("Red?", 0.0, "yes")]))
    with pytest.raises(ValueError, match=">= 0"):
        timing_reward(make_episode(4, {1: "yes"}), window_chunks=-1)


# gt chunk 5: early answers get no slack and a 2-chunk window; late ones 3 slack + 5 window.
@pytest.mark.parametrize("chunk, expected", [(3, 0.0), (4, 0.5), (5, 1.0), (8, 1.0), (9, 0.8)])
def test_timing_asymmetric(make_episode, chunk, expected):
    ep = make_episode(12, {chunk: "yes"}, [Query("Red?", 0.0, "yes", 5.0)])
    assert timing_asymmetric_reward(ep) == pytest.approx(expected)


def test_timing_asymmetric_early_params(make_episode):
    ep = make_episode(12, {3: "yes"}, [Query("Red?", 0.0, "yes", 5.0)])
    assert timing_asymmetric_reward(ep, early_window_chunks=4) == 0.5
    assert timing_asymmetric_reward(ep, early_slack_seconds=2.0) == 1.0


def test_multi_query_timing_is_the_mean(make_episode):
    queries = [Query("Which?", 0.0, "B", 3.0), Query("Red?", 5.0, "yes", 7.0)]
    ep = make_episode(10, {3: "B", 6: "yes"}, queries)  # on time; one chunk early
    assert timing_reward(ep) == 1.0
    assert timing_asymmetric_reward(ep) == 0.75


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, 0.0),
        (1, 1.0),
        (2, 0.75),
        (3, 0.75),
        (4, 0.75),
        (5, 0.5),
        (7, 0.5),
        (8, 0.25),
        (10, 0.25),
        (11, 0.0),
    ],
)
def test_response_count(make_episode, n, expected):
    ep = make_episode(12, dict.fromkeys(range(n), "maybe"))  # unparseable responses count too
    assert response_count_reward(ep) == expected


def test_response_count_averages_over_queries(make_episode):
    queries = [Query("Which?", 0.0, "B", 3.0), Query("Red?", 5.0, "yes", 7.0)]
    assert response_count_reward(make_episode(10, {3: "B", 6: "no", 7: "yes"}, queries)) == (1.0 + 0.75) / 2
    with pytest.raises(ValueError, match="no queries"):
        response_count_reward(make_episode(3, {1: "yes"}, queries=[]))


@pytest.mark.parametrize(
    "think_tokens, expected", [(15, 1.0), (40, 1.0), (14, 0.5), (10, 0.5), (5, 0.25), (4, 0.0)]
)
def test_efficiency_think_factor(make_episode, think_tokens, expected):
    assert efficiency_reward(make_episode(4, {2: "yes"}, think_tokens=think_tokens)) == expected


def test_efficiency_multiplies_the_factors(make_episode):
    ep = make_episode(4, {1: "no", 2: "yes"})
    ep.turns[0] = dataclasses.replace(ep.turns[0], think_tokens=3)  # avg (3 + 15 + 15 + 15) / 4 = 12
    assert efficiency_reward(ep) == 0.5 * 0.75  # floor(12 / 5) / 4 × two responses
    # min 30, step 10: avg 25 → floor(2.5) · 10 / 40
    assert (
        efficiency_reward(
            make_episode(4, {2: "yes"}, think_tokens=25), min_think_tokens=30, think_step_tokens=10
        )
        == 0.5
    )
    assert efficiency_reward(make_episode(0)) == 0.0
