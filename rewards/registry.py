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

A function in verl's reward signature plugs in unchanged (:class:`VerlComputeScore`)::

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float | dict: ...

It is told apart by its parameter names and scores the trajectory's final turn.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import numbers
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from streamreason.errors import ConfigError
from streamreason.registry import Registry
from streamreason.types import Episode

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

    A function whose parameters include ``data_source``, ``solution_str`` and ``ground_truth``
    (verl's ``compute_score``) comes back wrapped in :class:`VerlComputeScore`, a reward of an
    :class:`Episode` like any other.

    Args:
        name_or_spec: a registered name (``"timing"``), a file spec
            (``"examples/custom_reward.py:brevity"``, relative to the working directory) or a
            module spec (``"mypkg.rewards:brevity"``, importable from ``sys.path``). A file
            named ``__init__.py`` is loaded as its package, so its relative imports
            (``from . import general_mc``) resolve.

    Raises:
        ConfigError: unknown name (the message lists the registered ones); the file or module
            is missing or fails to import; it has no attribute ``fn``; ``fn`` is not callable;
            or ``fn`` is a verl ``compute_score`` defined with ``async def``.
    """
    if ":" not in name_or_spec:
        return _as_reward(name_or_spec, _REWARDS.get(name_or_spec))
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
    return _as_reward(name_or_spec, fn)


def _as_reward(spec: str, fn: RewardFn) -> RewardFn:
    if not is_verl_compute_score(fn):
        return fn
    if inspect.iscoroutinefunction(fn):
        raise ConfigError(
            f"reward spec {spec!r}: {fn.__name__} is 'async def'; rewards are scored synchronously, "
            "so give a plain 'def compute_score(...)'"
        )
    return VerlComputeScore(fn)


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _load_file(spec: str, target: str):
    path = Path(target)
    if not path.is_file():
        raise ConfigError(
            f"reward spec {spec!r}: no file {str(path.resolve())!r}; give a path relative to "
            "the working directory, or an absolute one"
        )
    if path.name == "__init__.py":
        return _load_package(spec, target, path)
    # Not put in sys.modules: the function then pickles by value (cloudpickle), so Ray workers
    # that cannot import the user's file still receive it.
    module_spec = importlib.util.spec_from_file_location(f"streamreason_custom_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"reward spec {spec!r}: importing {target} failed: {type(e).__name__}: {e}") from e
    return module


def _load_package(spec: str, target: str, init: Path):
    """The package whose ``__init__.py`` is ``init``, under a name fixed by its folder.

    A relative import (``from . import general_mc``, as verl's ``reward_score/__init__.py``
    does inside ``compute_score``) looks its package up in ``sys.modules`` when it runs, so
    the package is registered there, unlike a plain file. The name is derived from the
    folder's absolute path, so every process that loads the same spec (each Ray worker builds
    the reward from the recipe) gets the same name, and a function pickled by reference
    resolves there.
    """
    folder = init.resolve().parent
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    name = f"streamreason_custom_reward_{re.sub(r'[^0-9A-Za-z_]', '_', folder.name)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
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


VERL_INPUTS = ("data_source", "solution_str", "ground_truth", "extra_info")
"""The keyword arguments verl's reward managers pass to ``compute_score``
(``verl/workers/reward_manager/naive.py``, ``verl/experimental/reward_loop/reward_manager/naive.py``)."""


def is_verl_compute_score(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes verl's reward arguments: its parameters include ``data_source``,
    ``solution_str`` and ``ground_truth`` (by name, as verl passes them). A callable without a
    readable signature is not one."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(name in params for name in VERL_INPUTS[:3])


def verl_score_inputs(episode: Episode) -> dict[str, Any]:
    """The arguments a verl ``compute_score`` receives for ``episode``.

    - ``solution_str``: the final turn's decoded text (:attr:`TurnOutcome.text`, the turn with
      its tags, end-of-turn token removed); ``""`` for an episode without turns. verl scores
      one response per sample (its reward loop takes the last sequence of a multi-sequence
      output), and a recipe that asks for the answer on the last turn (VST's ``\\boxed{}``)
      puts it there. Earlier turns are not seen: a streaming trajectory that answers several
      times (one response per query, or a response at the evidence) is judged only by what
      its last turn says, which may be a silent turn. Score such trajectories with an
      :class:`Episode` reward (``correctness``, ``timing``) beside it.
    - ``ground_truth``: the row's own ``ground_truth`` field when it has one (kept in
      ``meta``, in the source's form: verl's ``reward_model.ground_truth``, e.g. VST's
      ``["1/2"]``), else the last query's answer. The last query is the one the final turn
      answers; a row with several queries passes only that one's answer.
    - ``data_source``: ``meta["data_source"]`` (VST rows from ``streamreason data convert
      --from vst`` carry it: ``"multiple choice"``, ``"numerical"``, ``"yes or no"``), else the
      row's task (``meta["task"]``), else ``"streamreason"``.
    - ``extra_info``: a new dict of the row's ``meta`` plus ``id`` (the row id) and
      ``num_turns`` (turns in the trajectory; verl adds its ``num_turns`` too).

    Raises:
        ValueError: the final turn has no decoded text (an episode built without
            ``TurnOutcome.text``), or there is no ground truth (neither ``meta["ground_truth"]``
            nor an answer on the last query).
    """
    meta = episode.meta
    if episode.turns and episode.turns[-1].text is None:
        raise ValueError(
            f"the final turn (chunk {episode.turns[-1].chunk_index}) has no decoded text "
            "(TurnOutcome.text), which a verl compute_score scores"
        )
    ground_truth = meta.get("ground_truth")
    if ground_truth is None:
        ground_truth = episode.queries[-1].answer if episode.queries else None
    if ground_truth is None:
        raise ValueError("no ground truth: the row has no 'ground_truth' field and its last query no answer")
    return {
        "data_source": meta.get("data_source") or meta.get("task") or "streamreason",
        "solution_str": episode.turns[-1].text if episode.turns else "",
        "ground_truth": ground_truth,
        "extra_info": {**meta, "id": episode.row_id, "num_turns": len(episode.turns)},
    }


class VerlComputeScore:
    """A verl ``compute_score`` as a reward of an :class:`Episode`.

    ``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)`` is
    verl's reward signature (``verl.utils.reward_score.default_compute_score``); it is called
    with :func:`verl_score_inputs` as keywords, as verl's reward managers call it, plus the
    reward's ``rewards.params`` (verl's ``custom_reward_function.reward_kwargs``).

    It returns a float, or a dict holding the scalar under ``"score"``: its other numeric keys
    are reported as ``<name>/<key>`` components, as any dict reward's are; keys whose values
    are not numbers (verl logs them, e.g. DAPO's ``"pred"`` string) are dropped. A raise is a
    failing reward like any other (``rewards.on_error``).

    The signature seen by :class:`~streamreason.rewards.composite.CompositeReward` is
    ``(episode, *, <compute_score's other parameters>)``, so ``rewards.params`` are checked
    against the function when the run starts.

    Example::

        def compute_score(data_source, solution_str, ground_truth, extra_info=None):
            return float(solution_str.strip().endswith(ground_truth))

        VerlComputeScore(compute_score)(episode)  # 1.0 when the final turn ends with the answer
    """

    def __init__(self, compute_score: Callable[..., Any]):
        self.compute_score = compute_score
        self.__name__ = getattr(compute_score, "__name__", type(compute_score).__name__)
        self.__doc__ = compute_score.__doc__
        sig = inspect.signature(compute_score)
        rest = [
            p if p.kind == p.VAR_KEYWORD else p.replace(kind=p.KEYWORD_ONLY)
            for name, p in sig.parameters.items()
            if name not in VERL_INPUTS and p.kind != p.VAR_POSITIONAL
        ]
        self._takes_extra_info = "extra_info" in sig.parameters or any(
            p.kind == p.VAR_KEYWORD for p in sig.parameters.values()
        )
        episode = inspect.Parameter("episode", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.__signature__ = inspect.Signature([episode, *rest])

    def __call__(self, episode: Episode, **params: Any) -> float | dict[str, float]:
        clash = sorted(set(params) & set(VERL_INPUTS))
        if clash:
            raise TypeError(f"params {clash} are verl's inputs, set from the episode; rename them")
        inputs = verl_score_inputs(episode)
        if not self._takes_extra_info:
            del inputs["extra_info"]
        value = self.compute_score(**inputs, **params)
        if isinstance(value, Mapping):
            return {k: v for k, v in value.items() if k == "score" or isinstance(v, numbers.Real)}
        return value

    def __repr__(self) -> str:
        return f"VerlComputeScore({self.compute_score!r})"
