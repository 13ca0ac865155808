"""A custom reward, plugged in from a recipe without touching the package.

A reward is a plain function ``fn(episode: Episode, **params) -> float``: it receives the
trajectory at the text level (:class:`streamreason.types.Episode`) and the keyword arguments
set under ``rewards.params.<name>``. It may instead return a dict of floats holding the
scalar under ``"score"``; the other keys are reported as ``<name>/<key>`` metrics.

Use it from a recipe (or the command line)::

    rewards.custom.brevity=examples/custom_reward.py:brevity rewards.weights.brevity=0.1
    rewards.params.brevity.cap_chars=50

Run this file to score a hand-made episode: ``python examples/custom_reward.py``.
"""

from __future__ import annotations

from streamreason.types import Episode


def brevity(episode: Episode, cap_chars: int = 100) -> float:
    """1 − mean response length / ``cap_chars``, clipped to [0, 1].

    Lengths are in characters of the response text. An episode with no responses scores 1:
    weigh this lightly against correctness, or silence becomes the best policy.
    """
    lengths = [len(t.response or "") for t in episode.turns if t.action == "response"]
    if not lengths:
        return 1.0
    return max(0.0, 1.0 - sum(lengths) / len(lengths) / cap_chars)


if __name__ == "__main__":
    from streamreason.rewards import CompositeReward, RewardConfig
    from streamreason.types import Query, TurnOutcome

    episode = Episode(
        row_id="demo",
        chunk_seconds=1.0,
        queries=[Query("Is the square red?", time_s=0.0, answer="yes", answer_time_s=2.0)],
        turns=[
            TurnOutcome(
                0, 0.0, 1.0, "silent", "a grey square appears in the top left corner", 15, format_ok=True
            ),
            TurnOutcome(
                1, 1.0, 2.0, "silent", "the square is turning a darker shade of orange", 15, format_ok=True
            ),
            TurnOutcome(
                2,
                2.0,
                3.0,
                "response",
                "the square is now red, so the answer is yes",
                15,
                response="Yes",
                format_ok=True,
            ),
        ],
    )
    cfg = RewardConfig(custom={"brevity": f"{__file__}:brevity"})
    cfg.weights["brevity"] = 0.1
    print(CompositeReward(cfg)(episode))
