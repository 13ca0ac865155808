"""The reward registry: the one place a reward gets a name.

A reward is a plain callable (TRL style)::

    def my_reward(episode: Episode, **params) -> float | dict[str, float]: ...

``params`` are the keyword arguments a recipe sets under ``rewards.params.<name>``. A dict
return reports sub-components for metrics and must hold the scalar under ``"score"``
(see :class:`~streamreason.rewards.composite.CompositeReward`).

Add a built-in by decorating it in ``rewards/builtin.py``::

    @register_reward("my_reward")
    def my_reward(episode: Episode) -> float: ...

or load one from outside the package with a spec, ``"path/to/file.py:fn"`` or
``"package.module:fn"`` (:func:`get_reward`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path

from streamreason.errors import ConfigError
from streamreason.registry import Registry

RewardFn = Callable[..., float | Mapping[str, float]]
"""``fn(episode: Episode, **params) -> float | dict[str, float]``."""

_REWARDS: Registry[RewardFn] = Registry(
    "reward",
    unknown=lambda name, names: (
        f"unknown reward {name!r}; registered: {', '.join(names)} "
        "(or give a custom one as 'path/to/file.py:fn' or 'module:fn')"
    ),
)


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward function under ``name``.

    Raises:
        ValueError: ``name`` is taken or contains ``:`` (reserved for specs).
    """

    def decorate(fn: RewardFn) -> RewardFn:
        if ":" in name:
            raise ValueError(f"reward name {name!r} contains ':', which marks a 'file.py:fn' spec")
        return _REWARDS.register(name, fn)

    return decorate


def list_rewards() -> list[str]:
    """The registered reward names, sorted."""
    return _REWARDS.names()


def get_reward(name_or_spec: str) -> RewardFn:
    """A registered reward by name, or a custom one by spec.

    Args:
        name_or_spec: a registered name (``"timing"``), a file spec
            (``"examples/custom_reward.py:brevity"``, relative to the working directory) or a
            module spec (``"mypkg.rewards:brevity"``, importable from ``sys.path``).

    Raises:
        ConfigError: unknown name (the message lists the registered ones); the file or module
            is missing or fails to import; it has no attribute ``fn``; or ``fn`` is not callable.
    """
    if ":" not in name_or_spec:
        return _REWARDS.get(name_or_spec)
    target, _, attr = name_or_spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"reward spec {name_or_spec!r}: expected 'path/to/file.py:fn' or 'module:fn'")
    module = _load_file(name_or_spec, target) if _is_path(target) else _load_module(name_or_spec, target)
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(
            f"reward spec {name_or_spec!r}: {target} defines no {attr!r}; fix the name after ':'"
        )
    if not callable(fn):
        raise ConfigError(
            f"reward spec {name_or_spec!r}: {attr!r} is a {type(fn).__name__}, not a function "
            "fn(episode, **params) -> float"
        )
    return fn


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _load_file(spec: str, target: str):
    path = Path(target)
    if not path.is_file():
        raise ConfigError(
            f"reward spec {spec!r}: no file {str(path.resolve())!r}; give a path relative to "
            "the working directory, or an absolute one"
        )
    # Not put in sys.modules: the function then pickles by value (cloudpickle), so Ray workers
    # that cannot import the user's file still receive it.
    module_spec = importlib.util.spec_from_file_location(f"streamreason_custom_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"reward spec {spec!r}: importing {target} failed: {type(e).__name__}: {e}") from e
    return module


def _load_module(spec: str, target: str):
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"reward spec {spec!r}: {e}; install the module or add its folder to PYTHONPATH, "
            "or give a file path 'path/to/file.py:fn'"
        ) from e
    except Exception as e:
        raise ConfigError(f"reward spec {spec!r}: importing {target} failed: {type(e).__name__}: {e}") from e
