"""VST's reward (``rewards/vst.py``) against VST's own ``compute_score``.

The oracle is VST's reward code copied byte for byte under ``official_vst/`` (1ranGuan/VST
b6f4490, ``VST-RL/verl/utils/reward_score/``); "l." is a line of the file named in the case.
VST's rows carry the raw ground truth (``["A."]``, ``["Yes"]``), ours the converted one
(``data convert --from vst``: ``A``, ``yes``); each case gives both.
"""

import doctest
import random

import pytest

from streamreason.rewards import get_reward, vst
from streamreason.rewards.composite import CompositeReward, RewardConfig
from streamreason.rewards.vst import compute_score, vst_correctness_reward
from streamreason.tests.rewards.official_vst import _default_compute_score as vst_compute_score
from streamreason.types import Episode, Query, TurnOutcome

MC, NUM, YN = "multiple choice", "numerical", "yes or no"

CASES = [
    # general_mc.py l. 30-36: the first standalone letter inside the first box
    (MC, "I think it is \\boxed{B}", "B.", "B", 1.0),
    (MC, "The answer is \\boxed{(C)}.", "C.", "C", 1.0),
    # general_mc.py l. 15-17: a hedged box reads as its first letter
    (MC, "\\boxed{A or B}", "A.", "A", 1.0),
    (MC, "\\boxed{A or B}", "B.", "B", 0.0),
    # general_mc.py l. 30: the first box, not the last
    (MC, "\\boxed{A} then \\boxed{B}", "B.", "B", 0.0),
    # general_mc.py l. 39: no box, the first standalone letter of the whole text
    (MC, "B, because the dog is brown", "B.", "B", 1.0),
    (MC, "Answer: D or E", "E.", "E", 0.0),
    # general_mc.py l. 15: upper case only, standalone only ("Answer" holds no option)
    (MC, "\\boxed{b}", "B.", "B", 0.0),
    (MC, "B \\boxed{Answer}", "B.", "B", 0.0),
    (MC, "ABCDE", "A.", "A", 0.0),
    # general_numerical.py l. 28-31: mathruler's last box, graded by grade_answer
    (NUM, "so \\boxed{3.0}", "3", "3", 1.0),
    (NUM, "\\boxed{3}", "3.0", "3", 1.0),
    (NUM, "\\boxed{1/2}", "0.5", "0.5", 1.0),
    (NUM, "\\boxed{\\frac{1}{2}}", "0.5", "0.5", 1.0),  # balanced braces, unlike the letter rules' box
    (NUM, "\\boxed{2} no, \\boxed{3}", "3", "3", 1.0),
    (NUM, "\\boxed{12 apples}", "12", "12", 0.0),
    # general_numerical.py l. 29-30: no box, the whole text is the answer
    (NUM, "3", "3", "3", 1.0),
    (NUM, "there are 3", "3", "3", 0.0),
    # general_bc.py l. 16, 22: yes/no in any case, compared title-cased
    (YN, "\\boxed{yes}", "Yes", "yes", 1.0),
    (YN, "YES", "Yes", "yes", 1.0),
    (YN, "\\boxed{No.}", "No", "no", 1.0),
    # general_bc.py l. 16-19: the first one counts ("Yes but no" is a yes)
    (YN, "Yes but no", "No", "no", 0.0),
    (YN, "Yes but no", "Yes", "yes", 1.0),
    # general_bc.py l. 16: standalone words only
    (YN, "\\boxed{Yesterday}", "Yes", "yes", 0.0),
    (YN, "Nope", "No", "no", 0.0),
]


@pytest.mark.parametrize(("source", "text", "vst_gt", "our_gt", "expected"), CASES)
def test_hand_built_cases_score_as_vst(source, text, vst_gt, our_gt, expected):
    assert vst_compute_score(source, text, [vst_gt]) == expected  # the case says what VST does
    assert compute_score(source, text, our_gt) == expected


@pytest.mark.parametrize("source", [MC, NUM, YN])
def test_val_sources_score_as_the_training_ones(source):
    # __init__.py l. 58-73: "... val" runs the same rule (is_val is ignored; VST's yes/no val is a NameError)
    text, gt = {MC: ("\\boxed{C}", "C"), NUM: ("\\boxed{4}", "4"), YN: ("\\boxed{no}", "no")}[source]
    assert compute_score(f"{source} val", text, gt) == compute_score(source, text, gt) == 1.0


ANSWERS = {  # what goes in a box, beside noise
    MC: ["A", "B", "E", "(B)", "B.", "A or B", "b", "F", "Answer"],
    YN: ["yes", "No", "YES", "no.", "Yes but no", "Yesterday"],
    NUM: ["3", "3.0", "1/2", "0.5", "\\frac{1}{2}", "2", "-3", "3 x"],
}
NOISE = ["x", " ", ".", ",", "(", ")", "{", "}", "\n", " or ", "a", "I"]
GROUND_TRUTHS = {MC: [("A.", "A"), ("B.", "B"), ("E.", "E")], YN: [("Yes", "yes"), ("No", "no")],
                 NUM: [("3", "3"), ("0.5", "0.5")]}  # fmt: skip


def _random_turn(rng: random.Random, answers: list[str]) -> str:
    """Noise and answers, then up to two boxes holding an answer, then noise."""

    def some(k: int) -> str:
        return "".join(rng.choice(NOISE + answers[:2]) for _ in range(rng.randint(0, k)))

    def answer() -> str:
        return (
            rng.choice(["", "", " ", "(", "x"]) + rng.choice(answers) + rng.choice(["", " ", ".", ")", "x"])
        )

    boxes = "".join(f"\\boxed{{{answer()}}}{some(2)}" for _ in range(rng.choice([0, 1, 1, 1, 2])))
    return some(3) + boxes + some(2)


@pytest.mark.parametrize(("source", "n"), [(MC, 300), (YN, 300), (NUM, 100)])
def test_random_strings_score_as_vst(source, n):
    rng = random.Random(f"vst-{source}")
    scores = []
    for _ in range(n):
        text = _random_turn(rng, ANSWERS[source])
        vst_gt, our_gt = rng.choice(GROUND_TRUTHS[source])
        scores.append(compute_score(source, text, our_gt))
        assert scores[-1] == vst_compute_score(source, text, [vst_gt]), (text, vst_gt)
    assert min(sum(scores), n - sum(scores)) >= n // 20  # both outcomes are exercised


def _episode(texts: list[str], source: str | None = MC, answer: str = "B") -> Episode:
    turns = [TurnOutcome(k, 31.0 * k, 31.0 * (k + 1), "silent", text=t) for k, t in enumerate(texts)]
    meta = {} if source is None else {"data_source": source}
    return Episode("vst-1", 31.0, [Query("Which?", 70.0, answer, 70.0)], turns, meta)


def test_only_the_final_turn_is_scored():
    # ray_trainer.py l. 1211: VST's reward batch is the final turns (final_batch)
    assert get_reward("vst_correctness") is vst_correctness_reward
    assert vst_correctness_reward(_episode(["a dog \\boxed{B}", "\\boxed{A}"])) == 0.0
    assert vst_correctness_reward(_episode(["a cat \\boxed{A}", "a dog", "\\boxed{B}"])) == 1.0
    ep = _episode(["thinking", "\\boxed{yes}"], source=YN, answer="yes")
    assert CompositeReward(RewardConfig(weights={"vst_correctness": 1.0}))(ep).total == 1.0


def test_an_episode_it_cannot_score_is_an_error():
    with pytest.raises(ValueError, match="data_source"):
        vst_correctness_reward(_episode(["\\boxed{B}"], source=None))
    with pytest.raises(ValueError, match="'free text'"):
        vst_correctness_reward(_episode(["\\boxed{B}"], source="free text"))
    with pytest.raises(ValueError, match="final turn"):
        vst_correctness_reward(_episode([]))
    result = CompositeReward(RewardConfig(weights={"vst_correctness": 1.0}))(_episode(["x"], source=None))
    assert not result.ok and "vst_correctness" in result.error


def test_the_docstring_examples_hold():
    assert doctest.testmod(vst).failed == 0
