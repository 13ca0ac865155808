"""The generic registry behind the rewards, protocols, engines, memory policies, benchmarks and
dataset formats: a name is taken once, looked up, and an unknown one is a ConfigError naming the
config key and the registered names."""

import doctest
import sys
import types

import pytest

from streamreason import registry
from streamreason.errors import ConfigError
from streamreason.registry import Registry


def _fn():
    pass


class _Thing:
    pass


def test_register_returns_the_object_and_get_finds_it():
    reg = Registry("widget")
    assert reg.register("a", _fn) is _fn
    assert reg.get("a") is _fn and "a" in reg and "b" not in reg


def test_a_name_is_registered_once_and_the_message_names_its_holder():
    reg = Registry("widget")
    reg.register("a", _fn)
    for again in (_fn, _Thing):
        with pytest.raises(ValueError, match="widget 'a' is already registered to _fn"):
            reg.register("a", again)
    reg.register("t", _Thing())  # an instance is named by its class
    with pytest.raises(ValueError, match="widget 't' is already registered to _Thing"):
        reg.register("t", _Thing())
    assert reg.get("a") is _fn


def test_a_module_imported_again_replaces_its_own_definitions():
    reg = Registry("widget")
    first = type("Again", (), {"__module__": "some.module"})
    second = type("Again", (), {"__module__": "some.module"})
    reg.register("x", first)
    assert reg.register("x", second) is second and reg.get("x") is second
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", type("Again", (), {"__module__": "other.module"}))


def test_unknown_name_names_the_config_key_and_the_registered_ones():
    reg = Registry("widget", config_key="rollout.widget.name")
    reg.register("b", _fn)
    reg.register("a", _fn)
    with pytest.raises(
        ConfigError, match=r"^rollout.widget.name='c' is not a registered widget; choose one of \['a', 'b'\]$"
    ):
        reg.get("c")
    with pytest.raises(ConfigError, match=r"^unknown widget 'c'; registered: a, b$"):
        Registry("widget", builtin_modules={"a": "m", "b": "m"}).get("c")
    custom = Registry("widget", unknown=lambda name, names: f"no {name}, only {'/'.join(names)}")
    custom.register("a", _fn)
    with pytest.raises(ConfigError, match="^no c, only a$"):
        custom.get("c")


def test_names_are_sorted_or_in_registration_order():
    sorted_reg, ordered = Registry("widget"), Registry("widget", sort_names=False)
    for reg in (sorted_reg, ordered):
        for name in ("b", "c", "a"):
            reg.register(name, _fn)
    assert sorted_reg.names() == ["a", "b", "c"]
    assert ordered.names() == ["b", "c", "a"]


def test_a_builtin_module_is_imported_on_first_lookup(monkeypatch):
    reg = Registry("widget", config_key="widget.name", builtin_modules={"lazy": "tests_lazy_widget"})
    imported = []

    def import_module(name):  # what importing the built-in's module does: it registers itself
        imported.append(name)
        return reg.register("lazy", _fn)

    monkeypatch.setattr(registry.importlib, "import_module", import_module)
    assert "lazy" in reg and reg.names() == ["lazy"] and not imported
    assert reg.get("lazy") is _fn and reg.get("lazy") is _fn
    assert imported == ["tests_lazy_widget"]


def test_a_builtin_module_that_registers_nothing_leaves_the_name_unknown(monkeypatch):
    reg = Registry("widget", builtin_modules={"lazy": "tests_lazy_widget"})
    module = types.ModuleType("tests_lazy_widget")
    monkeypatch.setitem(sys.modules, "tests_lazy_widget", module)
    with pytest.raises(ConfigError, match="unknown widget 'lazy'"):  # imported, registered nothing
        reg.get("lazy")
    reg.register("lazy", _fn)
    assert reg.get("lazy") is _fn


def test_a_copy_is_independent():
    reg = Registry("widget", config_key="widget.name")
    reg.register("a", _fn)
    copy = reg.copy()
    copy.register("b", _fn)
    assert copy.names() == ["a", "b"] and reg.names() == ["a"]
    with pytest.raises(ConfigError, match="widget.name='b'"):
        reg.get("b")


def test_the_docstring_example():
    assert doctest.testmod(registry).failed == 0
