"""The trajectory reward: a weighted sum of named reward components.

A recipe's ``rewards:`` section is a :class:`RewardConfig`; for example, ThinkStream's weights
plus a custom component::

    rewards:
      weights: {format: 0.2, timing: 0.2, correctness: 0.4, efficiency: 0.2, brevity: 0.1}
      params: {timing: {slack_seconds: 2.0}}
      custom: {brevity: examples/custom_reward.py:brevity}

or, from the command line, ``rewards.custom.brevity=examples/custom_reward.py:brevity
rewards.weights.brevity=0.1``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamreason.errors import ConfigError, RewardError
from streamreason.rewards.registry import get_reward, list_rewards
from streamreason.types import Episode

THINKSTREAM_WEIGHTS = {"format": 0.2, "timing": 0.2, "correctness": 0.4, "efficiency": 0.2}
"""R = 0.2·format + 0.2·time + 0.4·correctness + 0.2·efficiency (ThinkStream, ``thinkstream/trainer/grpo.py``)."""


@dataclass
class RewardConfig:
    """Which rewards make up the trajectory reward (an OmegaConf structured config).

    Attributes:
        weights: reward name → weight in the total; a weight of 0 computes and reports the
            component without training on it. Default: ThinkStream's.
        params: reward name → keyword arguments passed to it, e.g.
            ``{"timing": {"slack_seconds": 2.0}}``.
        custom: name → spec (``"path/to/file.py:fn"`` or ``"module:fn"``) of rewards loaded
            from outside the registry. They are always computed; give them a weight to train
            on them.
        on_error: ``"skip"`` (default): a failing reward makes the call return a
            :class:`RewardResult` with ``ok=False`` for the caller to count, so one bad sample
            never ends a long run; ``"raise"``: it raises :class:`RewardError` (fail fast).
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(THINKSTREAM_WEIGHTS))
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    custom: dict[str, str] = field(default_factory=dict)
    on_error: str = "skip"


@dataclass(frozen=True)
class RewardResult:
    """The reward of one trajectory.

    Attributes:
        total: sum of weight × component over ``weights``; NaN when ``ok`` is False, so a
            failed trajectory cannot pass for a scored one.
        components: every computed component by name (weighted or not), plus ``name/key``
            for the extra keys of a reward that returns a dict. Empty when ``ok`` is False.
        ok: False when a reward failed and ``on_error="skip"``.
        error: the failure's message when ``ok`` is False.
    """

    total: float
    components: dict[str, float]
    ok: bool = True
    error: str | None = None


class CompositeReward:
    """Scores an :class:`Episode` with every configured reward and sums them by weight.

    Every name is resolved and its params checked against its signature at construction.

    Raises:
        ConfigError: unknown reward name or bad spec (:func:`get_reward`); a custom name that
            shadows a registered one; params for a reward that is not computed or that its
            function does not accept; a non-finite weight; ``on_error`` not raise/skip.

    Example::

        reward = CompositeReward(RewardConfig(weights={"correctness": 1.0, "timing": 0.0}))
        reward(episode)  # RewardResult(total=1.0, components={'correctness': 1.0, 'timing': 0.8}, ...)
    """

    def __init__(self, cfg: RewardConfig):
        if cfg.on_error not in ("raise", "skip"):
            raise ConfigError(f"rewards.on_error must be 'raise' or 'skip', got {cfg.on_error!r}")
        self.on_error = cfg.on_error
        self.weights = {name: float(w) for name, w in cfg.weights.items()}
        for name, w in self.weights.items():
            if not math.isfinite(w):
                raise ConfigError(f"rewards.weights.{name} must be a finite number, got {w}")
        shadowing = sorted(set(cfg.custom) & set(list_rewards()))
        if shadowing:
            raise ConfigError(f"rewards.custom: {shadowing} shadow built-in rewards; give them other names")
        names = list(dict.fromkeys([*self.weights, *cfg.custom]))
        unused = sorted(set(cfg.params) - set(names))
        if unused:
            raise ConfigError(f"rewards.params: {unused} are not computed; add them to rewards.weights")
        self._rewards: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
        for name in names:
            fn = get_reward(cfg.custom.get(name, name))
            params = dict(cfg.params.get(name, {}))
            try:
                inspect.signature(fn).bind(None, **params)
            except TypeError as e:
                raise ConfigError(
                    f"rewards.params.{name}: {e} (signature: {inspect.signature(fn)})"
                ) from None
            self._rewards[name] = (fn, params)

    def __call__(self, episode: Episode) -> RewardResult:
        """The weighted total and every component, each as its reward returned it.

        Raises:
            RewardError: a reward raised, returned a non-finite or non-numeric value, or
                returned a dict without ``"score"`` (only with ``on_error="raise"``).
        """
        components: dict[str, float] = {}
        try:
            for name, (fn, params) in self._rewards.items():
                components.update(_components(name, fn, params, episode))
        except RewardError as e:
            if self.on_error == "raise":
                raise
            return RewardResult(total=math.nan, components={}, ok=False, error=str(e))
        return RewardResult(
            total=sum(w * components[name] for name, w in self.weights.items()), components=components
        )


def _components(
    name: str, fn: Callable[..., Any], params: dict[str, Any], episode: Episode
) -> dict[str, float]:
    try:
        value = fn(episode, **params)
    except Exception as e:
        raise RewardError(name, episode.row_id, f"{type(e).__name__}: {_text(e, str, limit=None)}") from e
    if isinstance(value, Mapping):
        if "score" not in value:
            keys = "[" + ", ".join(sorted(_text(k, repr) for k in value)) + "]"
            raise RewardError(
                name, episode.row_id, f"returned a dict without the required 'score' key: {keys}"
            )
        out = {
            name: value["score"],
            **{f"{name}/{_text(k, str, limit=None)}": v for k, v in value.items() if k != "score"},
        }
    else:
        out = {name: value}
    for key, v in out.items():
        if not _finite_real(v):
            raise RewardError(name, episode.row_id, f"{key} = {_text(v, repr)} is not a finite number")
    return {key: float(v) for key, v in out.items()}


def _finite_real(v: Any) -> bool:
    try:
        return isinstance(v, numbers.Real) and math.isfinite(v)
    except OverflowError:  # an int (or Fraction) too large for a float
        return False


def _text(v: Any, how: Callable[[Any], str], limit: int | None = 200) -> str:
    """``how(v)`` (``str`` or ``repr``) cut to ``limit`` characters, for a message; never raises."""
    try:
        text = how(v)
    except Exception as e:  # e.g. an int over Python's digit limit, or a broken __str__
        return f"<{type(v).__name__}, not printable: {type(e).__name__}>"
    return text if limit is None or len(text) <= limit else text[:limit] + "..."
