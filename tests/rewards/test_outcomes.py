from streamreason.rewards import query_outcomes
from streamreason.types import Query

TWO_QUERIES = [
    Query("Which shape turns red?", time_s=0.0, answer="B", answer_time_s=3.0),
    Query("Is the circle gone?", time_s=5.0, answer="yes", answer_time_s=7.0),
]


def test_each_query_gets_its_first_parseable_response(make_episode):
    responses = {1: "maybe", 3: "(B) the square", 4: "A", 6: "no", 8: "yes"}
    first, second = query_outcomes(make_episode(10, responses, TWO_QUERIES))

    assert first.query is TWO_QUERIES[0]
    assert (first.num_responses, first.answer, first.response_chunk, first.gt_chunk) == (
        3,
        "(B) the square",
        3,
        3,
    )
    assert (first.timing_error_s, first.correct) == (0.0, True)
    # "no" answers the second query (the later "yes" does not count), one chunk early.
    assert (second.num_responses, second.answer, second.response_chunk, second.gt_chunk) == (2, "no", 6, 7)
    assert (second.timing_error_s, second.correct) == (-1.0, False)


def test_responses_before_the_first_query_go_to_it(make_episode):
    queries = [Query("Is it red?", time_s=3.0, answer="yes", answer_time_s=3.0)]
    (outcome,) = query_outcomes(make_episode(6, {1: "yes", 4: "no"}, queries))
    assert (outcome.num_responses, outcome.answer, outcome.response_chunk, outcome.timing_error_s) == (
        2,
        "yes",
        1,
        -2.0,
    )


def test_queries_asked_in_one_chunk_the_later_gets_the_response(make_episode):
    queries = [Query("Is it red?", 2.0, "yes", 2.0), Query("How many?", 2.5, "3", 2.5)]
    first, second = query_outcomes(make_episode(4, {2: "3"}, queries))
    assert (first.num_responses, first.answer, first.correct) == (0, None, False)
    assert (second.num_responses, second.answer, second.correct) == (1, "3", True)


def test_timing_error_is_in_seconds(make_episode):
    queries = [Query("Is it red?", 0.0, "yes", 4.0)]  # gt chunk 2 at 2 s per chunk
    (outcome,) = query_outcomes(make_episode(6, {5: "yes"}, queries, chunk_seconds=2.0))
    assert (outcome.gt_chunk, outcome.response_chunk, outcome.timing_error_s) == (2, 5, 6.0)


def test_unknown_ground_truth_leaves_fields_none(make_episode):
    queries = [Query("Describe the scene.", 0.0)]
    (outcome,) = query_outcomes(make_episode(3, {1: "a red square"}, queries))
    # With no ground truth any non-empty text is an answer; correctness and timing are unknown.
    assert (outcome.answer, outcome.response_chunk, outcome.gt_chunk) == ("a red square", 1, None)
    assert outcome.timing_error_s is None and outcome.correct is None


def test_no_queries_no_outcomes(make_episode):
    assert query_outcomes(make_episode(3, {1: "yes"}, queries=[])) == []
