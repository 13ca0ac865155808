import doctest

import pytest

from streamreason import answers
from streamreason.answers import answer_kind, answers_match, parse_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("b)", "B"),
        ("  C:  ", "C"),
        ("B. red", "B"),
        ("(d) a blue circle", "D"),
        ("E", "E"),
        ("F", None),
        ("The answer is B", None),
        ("A or B", None),
        ("Bob", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_answer(text, "choice") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("NO!", "no"),
        ("y", "yes"),
        ("n?", "no"),
        ("yes, it is", None),
        ("nope", None),
    ],
)
def test_parse_yesno(text, expected):
    assert parse_answer(text, "yesno") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", "3"),
        ("+3", "3"),
        ("-2", "-2"),
        ("3.0", "3"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("7.", "7"),
        ("Twelve", "12"),
        ("zero.", "0"),
        ("twenty", "20"),
        ("twenty-one", None),
        ("3 cars", None),
        ("1,000", None),
        ("1e3", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_answer(text, "number") == expected


@pytest.mark.parametrize(
    "text, expected",
    [("The Red Square!", "red square"), ("  a   big,  dog ", "big dog"), ("The.", None), ("?!", None)],
)
def test_parse_text(text, expected):
    assert parse_answer(text, "text") == expected


def test_parse_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown answer kind 'letter'"):
        parse_answer("A", "letter")


@pytest.mark.parametrize(
    "gt, kind",
    [
        ("A", "choice"),
        ("(C)", "choice"),
        ("A.", "choice"),
        ("Yes", "yesno"),
        ("n", "yesno"),
        ("4", "number"),
        ("four", "number"),
        ("a red square", "text"),
        ("Anna", "text"),
    ],
)
def test_answer_kind(gt, kind):
    assert answer_kind(gt) == kind


@pytest.mark.parametrize(
    "response, gt, match",
    [
        ("(b) a red square", "B", True),
        ("B", "A.", False),
        ("The answer is B", "B", False),
        ("Yes!", "yes", True),
        ("Two.", "2", True),
        ("2.0", "2", True),
        ("3", "2", False),
        ("red square.", "The red square", True),
        (None, "yes", False),
        ("maybe", "yes", False),
    ],
)
def test_answers_match(response, gt, match):
    assert answers_match(response, gt) is match


def test_module_examples():
    assert doctest.testmod(answers).failed == 0
