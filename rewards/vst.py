r"""VST's reward: correctness of the final turn's answer, by answer type.

VST (arXiv 2603.12262; 1ranGuan/VST, commit b6f4490) scores a trajectory by its final turn only
(``VST-RL/verl/trainer/ppo/ray_trainer.py`` l. 1211, ``final_batch``): the turn is decoded
(``VST-RL/verl/workers/reward_manager/thread.py`` l. 216) and passed to ``compute_score``
(``VST-RL/verl/utils/reward_score/__init__.py``, ``_default_compute_score``) with the row's
``data_source`` and ``reward_model.ground_truth``; the score is 1.0 or 0.0. "l." below is a line
of the ``reward_score`` file named. Per data source:

* ``multiple choice`` (``general_mc.py``): the first letter A-E standing alone (``(?:^|\s|[^\w])
  ([A-E])(?=$|\s|[^\w])``, l. 15) inside the first ``\boxed{...}`` (lazy, l. 30), or in the
  whole text when there is no box (l. 39), equals the ground truth's first such letter (l. 57).
  ``A or B`` reads as ``A``; a box without a standalone letter scores 0 even if the text has one.
* ``yes or no`` (``general_bc.py``): the same with ``Yes``/``No`` in any case (l. 16), compared
  title-cased (l. 22).
* ``numerical`` (``general_numerical.py``): mathruler's ``extract_boxed_content`` (the last box,
  balanced braces), or the whole text when it gives ``"None"`` (l. 28-30), graded against the
  ground truth by mathruler's ``grade_answer`` (l. 31: equal after normalisation, or equal under
  sympy: ``1/2`` is ``0.5``, ``3.0`` is ``3``, ``12 apples`` is not ``12``).

Differences: the ground truth is the converted row's (``data convert --from vst``:
``["A."]`` becomes ``A``, ``Yes`` becomes ``yes``, a number its canonical form, ``3.0`` becoming
``3``), which each rule above reads as VST reads the original; a ground truth the converter
cannot read (``1/2``, ``1,000``) is a conversion error, not a row. The ``... val``
sources score as the training ones (VST's ``is_val`` is ignored, and ``yes or no val`` raises
``NameError`` there, ``__init__.py`` l. 73). The turn text is decoded with special tokens kept
(VST skips them); VST's outputs have none.
"""

from __future__ import annotations

import re

from streamreason.rewards.registry import register_reward
from streamreason.types import Episode

_BOX = re.compile(r"\\boxed\{(.*?)\}", re.DOTALL)
"""The first box, lazy (``general_mc.py`` l. 30, ``general_bc.py`` l. 32)."""
_OPTION = re.compile(r"(?:^|\s|[^\w])([A-E])(?=$|\s|[^\w])")
"""A standalone option letter (``general_mc.py`` l. 15)."""
_YES_NO = re.compile(r"(?:^|\s|[^\w])(Yes|No)(?=$|\s|[^\w])", re.IGNORECASE)
"""A standalone yes or no (``general_bc.py`` l. 16)."""
DATA_SOURCES = ("multiple choice", "numerical", "yes or no")
"""The answer types (``data_source``) VST's ``compute_score`` scores, each also with `` val``."""


def _first(pattern: re.Pattern, text: str) -> str | None:
    m = pattern.search(text)
    return m.group(1) if m else None


def _boxed_or_whole(text: str) -> str:
    """The first box's content, or the whole text without a box (``get_model_answer``)."""
    m = _BOX.search(text)
    return m.group(1) if m else text


def choice_answer(text: str) -> str | None:
    """``general_mc.get_model_answer`` (l. 23): the first standalone A-E in the first box, or in
    the text when it has no box; None when there is none."""
    return _first(_OPTION, _boxed_or_whole(text))


def yes_no_answer(text: str) -> str | None:
    """``general_bc.get_model_answer`` (l. 25): the first standalone yes/no (any case) in the
    first box, or in the text when it has no box, title-cased; None when there is none."""
    found = _first(_YES_NO, _boxed_or_whole(text))
    return None if found is None else found.title()


def compute_score(data_source: str, solution_str: str, ground_truth: str) -> float:
    """VST's ``compute_score`` for its three answer types (module docstring).

    Args:
        data_source: ``multiple choice``, ``numerical`` or ``yes or no`` (or one of them with
            `` val``).
        solution_str: the final turn's text.
        ground_truth: the answer (VST's ``ground_truth[0]``).

    Returns:
        1.0 when correct, else 0.0.

    Raises:
        ValueError: another ``data_source`` (VST raises ``NotImplementedError`` for those it has
            no rule for).

    >>> compute_score("multiple choice", "It is A or B. \\\\boxed{B}", "B")
    1.0
    >>> compute_score("numerical", "\\\\boxed{1/2}", "0.5"), compute_score("yes or no", "Yes but no", "no")
    (1.0, 0.0)
    """
    source = data_source.removesuffix(" val")
    if source == "multiple choice":
        pred, gt = choice_answer(solution_str), _first(_OPTION, ground_truth)
    elif source == "yes or no":
        pred, gt = yes_no_answer(solution_str), yes_no_answer(ground_truth)
    elif source == "numerical":
        # imported here: mathruler imports sympy (half a second), which only numbers need
        from mathruler.grader import extract_boxed_content, grade_answer

        answer = extract_boxed_content(solution_str)
        return 1.0 if grade_answer(solution_str if answer == "None" else answer, ground_truth) else 0.0
    else:
        raise ValueError(f"VST has no reward for data_source {data_source!r}; expected one of {DATA_SOURCES}")
    return 1.0 if pred and gt and pred == gt else 0.0


@register_reward("vst_correctness")
def vst_correctness_reward(episode: Episode) -> float:
    """VST's reward: :func:`compute_score` of the final turn's text, with the episode's
    ``data_source`` (``Episode.meta``, from the VST converter) and the answer of the question
    asked last (VST asks one, on the final turn).

    Raises:
        ValueError: the episode has no turns, its final turn no text, no query with an answer,
            or no ``data_source`` VST scores.
    """
    if not episode.turns or episode.turns[-1].text is None:
        raise ValueError("vst_correctness reads the final turn's text; the episode has none")
    asked = [q for q in episode.queries if q.answer is not None]
    if not asked:
        raise ValueError("nothing to score: no query has a ground-truth answer")
    question = max(asked, key=lambda q: q.time_s)
    source = episode.meta.get("data_source")
    if not isinstance(source, str):
        raise ValueError(
            f"vst_correctness needs the row's data_source (one of {DATA_SOURCES}), got {source!r}"
        )
    return compute_score(source, episode.turns[-1].text, question.answer)
