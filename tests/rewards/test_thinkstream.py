"""ThinkStream's rules on hand-built episodes; every expected value is worked out from
CASIA-IVA-Lab/ThinkStream ``thinkstream/trainer/grpo.py`` at the line cited."""

import pytest

from streamreason.config import load_config
from streamreason.errors import RewardError
from streamreason.rewards import CompositeReward, RewardConfig, literal_answer
from streamreason.rewards.builtin import format_reward, timing_reward
from streamreason.rewards.thinkstream import (
    think_length_factor,
    thinkstream_correctness_reward,
    thinkstream_efficiency_reward,
    thinkstream_timing_reward,
)
from streamreason.rollout.protocol import get_protocol
from streamreason.types import Episode, Query, TurnOutcome
from tests.test_config import RECIPES

WTS = get_protocol("watch_think_speak")
SILENT = "<think>nothing yet</think><silent>"


def episode(texts, think_tokens=18, answer="yes", answer_time_s=2.0, chunk_seconds=1.0, queries=None):
    """Turns parsed from ``texts`` by the real parser (chunk k = texts[k])."""
    turns = []
    for k, text in enumerate(texts):
        p = WTS.parse(text)
        turns.append(
            TurnOutcome(
                k,
                k * chunk_seconds,
                (k + 1) * chunk_seconds,
                p.action,
                p.think,
                think_tokens[k] if isinstance(think_tokens, list) else think_tokens,
                p.response,
                p.format_ok,
                text,
            )  # fmt: skip
        )
    queries = queries or [Query("Is it green?", 0.0, answer, answer_time_s)]
    return Episode("row", chunk_seconds, queries, turns, n_chunks=len(turns))


@pytest.mark.parametrize(
    "text, literal",
    # _extract_literal_answer, l. 112-124: strip; [A-E]; (A); A.; yes/no any case; one digit
    [("A", "A"), (" (B) ", "B"), ("C.", "C"), ("YES", "yes"), ("no", "no"), ("7", "7")]
    + [("a", None), ("10", None), ("B. red", None), ("y", None), ("(b)", None), ("", None), ("two", None)],
)
def test_literal_answer_is_thinkstreams(text, literal):
    assert literal_answer(text) == literal


def test_format_is_thinkstreams_regex():
    # _CHUNK_FORMAT_RE l. 41-44 on (text + <|im_end|>).strip() (l. 49), proportion of chunks (l. 52-57):
    # well formed: empty response, a later </think>, leading space; not: space after <silent>, no think.
    texts = ["<think>a</think><response>", "<think>a</think>b</think><silent>", " " + SILENT]
    texts += ["<think>a</think><silent> ", "<response>yes"]
    assert format_reward(episode(texts)) == 3 / 5


def test_correctness_takes_the_first_literal_of_any_kind():
    # _scan_responses_for_answer l. 145-151: the first <response> whose text is a literal is the
    # answer, whatever its kind; l. 171-177: it must equal the ground truth's literal.
    ep = episode(
        [
            SILENT,
            "<think>x</think><response>maybe",
            "<think>x</think><response>A",
            "<think>x</think><response>yes",
        ]
    )
    assert thinkstream_correctness_reward(ep) == 0.0  # "A" came first; ours takes "yes"
    ep = episode([SILENT, "<think>x</think><response>maybe", "<think>x</think><response>Yes"])
    assert thinkstream_correctness_reward(ep) == 1.0


def test_correctness_is_zero_for_a_ground_truth_that_is_not_a_literal():
    # l. 174-176: gt_answer None -> 0, even for an identical response
    assert thinkstream_correctness_reward(episode(["<think>x</think><response>12"], answer="12")) == 0.0


def test_a_response_inside_the_think_span_is_read():
    # _RESPONSE_RE l. 127 runs on the whole turn: "<response>yes</think><silent>" is one response
    # whose text "yes</think><silent>" is no literal; the parser calls the turn silent.
    ep = episode(["<think>say <response>yes</think><silent>", "<think>x</think><response>yes"])
    assert ep.turns[0].action == "silent"
    assert thinkstream_correctness_reward(ep) == 1.0
    # two responses (l. 145): count factor 0.75 (l. 180-197); think factor 1 (18 + 2 >= 15)
    assert thinkstream_efficiency_reward(ep) == 0.75


def test_timing_follows_thinkstream():
    # l. 541: gt = int(7.0 / 2.0) = 3; l. 565: s = int(3.0 / 2.0) = 1; l. 163-168: d = 3 -> 1 - 2/5
    ep = episode([SILENT] * 6 + ["<think>x</think><response>yes"], answer_time_s=7.0, chunk_seconds=2.0)
    assert thinkstream_timing_reward(ep) == pytest.approx(0.6)
    # l. 542: gt clamped to the last chunk (6): d = 0
    ep = episode([SILENT] * 6 + ["<think>x</think><response>yes"], answer_time_s=100.0, chunk_seconds=2.0)
    assert thinkstream_timing_reward(ep) == 1.0
    # l. 161: no literal answer -> 0
    assert thinkstream_timing_reward(episode(["<think>x</think><response>maybe"] * 3)) == 0.0


def test_timing_slack_has_no_epsilon():
    # l. 565: int(0.3 / 0.1) = int(2.9999999999999996) = 2, so d = 3 gives 1 - 1/5; ours rounds to 3 -> 1
    ep = episode([SILENT] * 3 + ["<think>x</think><response>yes"], answer_time_s=0.0, chunk_seconds=0.1)
    assert thinkstream_timing_reward(ep, slack_seconds=0.3) == pytest.approx(0.8)
    assert timing_reward(ep, slack_seconds=0.3) == 1.0


@pytest.mark.parametrize(
    "avg, factor",
    # _compute_think_length_factor(avg, 20, 5) l. 91-109: threshold 15, floor(avg / 5) / 4
    [(0, 0.0), (4.9, 0.0), (5, 0.25), (12, 0.5), (14.9, 0.5), (15, 1.0), (40, 1.0)],
)
def test_think_length_factor(avg, factor):
    assert think_length_factor(avg) == factor


def test_efficiency_measures_closed_think_spans_with_their_tags():
    # _collect_think_lengths l. 75-79: length of "<think>" + inner + "</think>" (13 + 2 = 15 -> 1),
    # only for turns with a closed span: the unclosed turn (think_tokens 0 here, 28 there) is left out.
    ep = episode([SILENT, "<think>never closed", "<think>x</think><response>yes"], think_tokens=[13, 28, 13])
    assert thinkstream_efficiency_reward(ep) == 1.0
    ep = episode([SILENT, "<think>x</think><response>yes"], think_tokens=10)  # 12 -> floor(12/5)/4
    assert thinkstream_efficiency_reward(ep) == 0.5
    assert thinkstream_efficiency_reward(episode(["<response>yes"], think_tokens=0)) == 0.0  # no span: avg 0


@pytest.mark.parametrize(
    "n, factor",
    [(0, 0.0), (1, 1.0), (2, 0.75), (4, 0.75), (5, 0.5), (7, 0.5), (8, 0.25), (10, 0.25), (11, 0.0)],
)
def test_response_count_factor(n, factor):
    # _compute_num_response_reward(n, 3, 10) l. 180-197: 1 - ((n - 2) // 3 + 1) / 4
    ep = episode(["<think>x</think><response>yes"] * n + [SILENT], think_tokens=18)
    assert thinkstream_efficiency_reward(ep) == factor


def test_recipe_total_is_thinkstreams_weighted_sum():
    # calc_rewards l. 578-583 with DEFAULT_REWARD_WEIGHTS l. 484-489
    cfg = load_config(RECIPES / "thinkstream_rlvr.yaml", ["model=/ckpt"])
    reward = CompositeReward(RewardConfig(**vars(cfg.rewards)))
    texts = [SILENT, "<think>x</think><response>maybe", "<think>a</think><silent> "]
    texts += [SILENT] * 5 + ["<think>x</think><response>(A)"]
    ep = episode(texts, answer="A", answer_time_s=2.0, think_tokens=10)
    fmt, corr = 8 / 9, 1.0
    time = 1 - (6 - 3) / 5  # gt 2, answer at 8, s = 3
    eff = 0.5 * 0.75  # 12 -> 0.5; two responses
    result = reward(ep)
    assert result.components["format"] == fmt
    assert result.components["thinkstream_correctness"] == corr
    assert result.components["thinkstream_timing"] == pytest.approx(time)
    assert result.components["thinkstream_efficiency"] == eff
    assert result.total == 0.2 * fmt + 0.2 * result.components["thinkstream_timing"] + 0.4 * corr + 0.2 * eff


def test_a_turn_without_text_is_a_reward_error():
    ep = episode([SILENT])
    ep.turns[0] = TurnOutcome(0, 0.0, 1.0, "silent", "x", 3, None, True)
    reward = CompositeReward(RewardConfig(weights={"thinkstream_efficiency": 1.0}, on_error="raise"))
    with pytest.raises(RewardError, match="turn 0 has no text"):
        reward(ep)
