"""A custom reward in verl's signature, plugged in unchanged.

verl's reward functions take ``(data_source, solution_str, ground_truth, extra_info=None,
**kwargs)`` and return a float or a dict holding ``"score"``. Such a function scores the
trajectory's final turn: ``solution_str`` is the last turn's decoded text, ``ground_truth`` the
row's answer, ``data_source`` the row's ``data_source`` (or its task), ``extra_info`` the row's
extra fields with its ``id`` and ``num_turns`` (docs/rewards.md gives the rules). Keyword
arguments come from ``rewards.params.<name>``.

Use it from a recipe (or the command line)::

    rewards.custom.boxed=examples/verl_compute_score.py:compute_score rewards.weights.boxed=1
    rewards.params.boxed.format_weight=0.2

Run this file to score a hand-made episode: ``python examples/verl_compute_score.py``.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{(.*?)\}", re.DOTALL)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, format_weight=0.1):
    """(1 − format_weight)·accuracy + format_weight·format on the final answer.

    accuracy: the content of the first ``\\boxed{...}``, stripped and case-folded, equals the
    ground truth (``ground_truth[0]`` when it is a list, as in verl datasets); format: a box is
    present. Returns verl's dict: ``score``, plus ``acc`` and ``format`` (reported as
    ``<name>/acc``, ``<name>/format``) and ``pred`` (a string, which verl logs; dropped here).
    """
    gt = ground_truth[0] if isinstance(ground_truth, (list, tuple)) else ground_truth
    box = _BOXED.search(solution_str)
    pred = box.group(1).strip() if box else None
    acc = float(pred is not None and pred.casefold() == str(gt).strip().casefold())
    fmt = float(box is not None)
    return {"score": (1 - format_weight) * acc + format_weight * fmt, "acc": acc, "format": fmt, "pred": pred}


if __name__ == "__main__":
    from streamreason.rewards import CompositeReward, RewardConfig
    from streamreason.types import Episode, Query, TurnOutcome

    episode = Episode(
        row_id="demo",
        chunk_seconds=1.0,
        queries=[
            Query("Which shape appeared? A. circle B. square", time_s=2.0, answer="B", answer_time_s=2.0)
        ],
        turns=[
            TurnOutcome(0, 0.0, 1.0, "silent", text="<think>a grey square, top left</think><silent>"),
            TurnOutcome(1, 1.0, 2.0, "silent", text="<think>it is still there</think><silent>"),
            TurnOutcome(2, 2.0, 3.0, "response", text="<think>a square</think><response>\\boxed{B}"),
        ],
        meta={"data_source": "multiple choice"},
    )
    cfg = RewardConfig(weights={"boxed": 1.0}, custom={"boxed": f"{__file__}:compute_score"})
    print(CompositeReward(cfg)(episode))
