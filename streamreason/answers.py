"""Literal answers: infer a ground truth's kind, parse a response for that kind, compare.

ThinkStream (``thinkstream/trainer/grpo.py``, correctness) scores a response as correct when its content
parses as a literal (``A``-``E``, ``(A)``, ``A.``, yes/no, a number) equal to the ground truth.
This module is that parser, extended with free-text answers compared SQuAD-style.

Kinds, and what a response must look like to parse (whole response, surrounding spaces ignored):

``"choice"``
    A letter A-E, any case: ``B``, ``(B)``, ``B.``, ``b)``, ``B:``; or such a letter followed
    by a delimiter and the option text, as OVO-Bench/StreamingBench write options: ``B. red``,
    ``(B) red``. A letter inside a sentence (``The answer is B``) does not parse: it is not a
    literal, and accepting it would let hedged answers (``A or B``) score.
``"yesno"``
    ``yes``/``no``/``y``/``n``, any case, optionally followed by ``.``, ``!`` or ``?``.
``"number"``
    A signed integer or decimal (``3``, ``-2``, ``+0.50``, ``.5``) or a number word
    ``zero``..``twenty``, optionally followed by ``.``; canonical form ``str(int)`` for whole
    numbers, else the shortest float repr (``"0.5"``). A number too large for a float does not
    parse.
``"text"``
    Anything that is not empty after SQuAD normalisation: lowercase, punctuation and the
    articles a/an/the removed, whitespace collapsed.

Examples:
    >>> answer_kind("B"), parse_answer("(b) a red square", "choice")
    ('choice', 'B')
    >>> answers_match("Two.", "2"), answers_match("The answer is B", "B")
    (True, False)
"""

from __future__ import annotations

import math
import re
import string

KINDS = ("choice", "yesno", "number", "text")

_CHOICE = re.compile(r"\(?([a-e])(?:\)?[.:]?|[.):]\s*\S.*)", re.IGNORECASE | re.DOTALL)
_YESNO = re.compile(r"(yes|no|y|n)[.!?]*", re.IGNORECASE)
_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\.?")
# fmt: off
_NUMBER_WORDS = {w: i for i, w in enumerate([
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
])}
# fmt: on
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def parse_answer(text: str | None, kind: str) -> str | None:
    """The canonical literal of ``text`` read as an answer of ``kind``.

    Args:
        text: a response (or a ground truth).
        kind: one of :data:`KINDS`.

    Returns:
        ``"A"``..``"E"`` (choice), ``"yes"``/``"no"`` (yesno), ``"3"``/``"0.5"`` (number), the
        normalised text (text), or None when ``text`` is None or does not parse as ``kind``.

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
    if text is None:
        return None
    text = text.strip()
    if kind == "choice":
        m = _CHOICE.fullmatch(text)
        return m.group(1).upper() if m else None
    if kind == "yesno":
        m = _YESNO.fullmatch(text)
        return None if m is None else "yes" if m.group(1).lower() in ("yes", "y") else "no"
    if kind == "number":
        word = _NUMBER_WORDS.get(text.rstrip(".").lower())
        if word is not None:
            return str(word)
        m = _NUMBER.fullmatch(text)
        if m is None:
            return None
        x = float(m.group(1))
        if not math.isfinite(x):  # too many digits for a float: any two such numbers would be equal
            return None
        return str(int(x)) if x.is_integer() else repr(x)
    normalised = " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())
    return normalised or None


def answer_kind(gt: str) -> str:
    """The kind of a ground-truth answer: the first of choice, yesno, number that parses it,
    else ``"text"`` (the three literal kinds never parse the same string)."""
    return next((k for k in KINDS[:-1] if parse_answer(gt, k) is not None), "text")


def answers_match(response: str | None, gt: str) -> bool:
    """Whether ``response`` parses, as ``gt``'s kind, to the same literal as ``gt``."""
    kind = answer_kind(gt)
    parsed = parse_answer(response, kind)
    return parsed is not None and parsed == parse_answer(gt, kind)
