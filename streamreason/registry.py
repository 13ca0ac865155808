"""One registry implementation: names for the things users extend.

The rewards, turn protocols, engines, memory policies, benchmarks and dataset formats each keep
a :class:`Registry`; their modules' ``register_*`` decorators and ``get_*`` functions are thin
wrappers over it, so a name is taken, looked up and reported the same way everywhere::

    >>> engines = Registry("engine", config_key="engine.name")
    >>> class Echo: ...
    >>> engines.register("echo", Echo) is Echo
    True
    >>> engines.get("echo") is Echo, "echo" in engines, engines.names()
    (True, True, ['echo'])
    >>> engines.get("ehco")
    Traceback (most recent call last):
    ...
    streamreason.errors.ConfigError: engine.name='ehco' is not a registered engine; choose one of ['echo']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from streamreason.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind (classes, functions or instances).

    Args:
        kind: what is registered, in words (``"memory policy"``), for the messages.
        config_key: the recipe key that names one (``"rollout.memory.name"``), if any; the
            unknown-name message then starts with ``key='name'``.
        builtin_modules: name -> module of built-ins defined in modules that are not imported
            up front (they need an optional dependency, such as vLLM); :meth:`get` imports the
            module on the name's first lookup, and its import registers the name.
        sort_names: :meth:`names` sorted (default), or in registration order.
        unknown: ``(name, names) -> message`` of the :class:`ConfigError` for an unknown name,
            where a module's wording differs from the default: ``key='name' is not a registered
            kind; choose one of [...]`` with a ``config_key``, ``unknown kind 'name'; registered:
            a, b`` without.
    """

    def __init__(
        self,
        kind: str,
        config_key: str | None = None,
        builtin_modules: dict[str, str] | None = None,
        *,
        sort_names: bool = True,
        unknown: Callable[[str, list[str]], str] | None = None,
    ):
        self.kind = kind
        self.config_key = config_key
        self.builtin_modules = dict(builtin_modules or {})
        self.sort_names = sort_names
        self.unknown = unknown
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` and return it (so a decorator can return it).

        Registering again a definition of the same module and qualified name as the holder's,
        but a new object (its module was imported again), replaces the holder.

        Raises:
            ValueError: ``name`` is taken; the message names the function or class holding it.
        """
        old = self._items.get(name)
        if old is not None:
            held, new = _definition(old), _definition(obj)
            if held is new or (held.__module__, held.__qualname__) != (new.__module__, new.__qualname__):
                raise ValueError(f"{self.kind} {name!r} is already registered to {held.__qualname__}")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its built-in module on first use.

        Raises:
            ConfigError: unknown name (the message names the config key and lists :meth:`names`).
            ImportError: the built-in module of ``name`` fails to import (a missing dependency).
        """
        if name not in self._items and name in self.builtin_modules:
            importlib.import_module(self.builtin_modules[name])
        if name not in self._items:
            raise ConfigError(self._unknown_message(name))
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, built-ins not imported yet included: sorted, or in
        registration order (then the built-ins not imported yet) when ``sort_names`` is off."""
        names = list(self._items) + [n for n in self.builtin_modules if n not in self._items]
        return sorted(names) if self.sort_names else names

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self.builtin_modules

    def copy(self) -> Registry[T]:
        """An independent registry holding the same names (tests register into a copy and
        monkeypatch it in, so their names do not outlive them)."""
        new = Registry(self.kind, self.config_key, self.builtin_modules, sort_names=self.sort_names,
                       unknown=self.unknown)  # fmt: skip
        new._items = dict(self._items)
        return new

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        if self.unknown is not None:
            return self.unknown(name, names)
        if self.config_key is not None:
            return f"{self.config_key}={name!r} is not a registered {self.kind}; choose one of {names}"
        return f"unknown {self.kind} {name!r}; registered: {', '.join(names)}"


def _definition(obj: object):
    """The function or class that defines ``obj``: itself, or an instance's class."""
    return obj if hasattr(obj, "__qualname__") else type(obj)
