"""The import structure: stage packages point downstream, nothing imports the CLI, no cycles.

Every ``import`` statement of every module is read with ``ast``, the ones inside functions too
(a lazy import is still a dependency), so the test fails on an import that only runs late.

Layers, lowest first (a module may import its own layer and those below):

0. ``streamreason.errors``, ``streamreason.types``, ``streamreason.answers`` (the rows' literal
   answers), ``streamreason.schema`` (the typed config loader), ``streamreason.registry`` (the
   one registry class): the base.
1. ``envs``; ``streamreason.modeling`` (checkpoints and the tiny model).
2. ``rollout``.
3. ``rewards`` (scores the text-level episodes the rollout yields).
4. ``streamreason.stack``: builds the components of a run from a recipe.
5. ``rl`` and ``evals``, beside each other (neither imports the other).
6. ``streamreason.config``: the recipe schema, assembled from the sections' dataclasses.
7. ``streamreason.cli``, ``streamreason.__main__``: the command line.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"streamreason": "streamreason", "envs": "envs", "rollout": "rollout", "rewards": "rewards",
            "rl": "rl", "evals": "evals"}  # fmt: skip
LAYER = {
    "streamreason": 0, "streamreason.errors": 0, "streamreason.types": 0, "streamreason.answers": 0,
    "streamreason.schema": 0, "streamreason.registry": 0,
    "streamreason.envs": 1, "streamreason.modeling": 1,
    "streamreason.rollout": 2,
    "streamreason.rewards": 3,
    "streamreason.stack": 4,
    "streamreason.rl": 5, "streamreason.evals": 5,
    "streamreason.config": 6,
    "streamreason.cli": 7, "streamreason.__main__": 7,
}  # fmt: skip


def _module_name(path: Path) -> str:
    folder = path.parent.name
    pkg = "streamreason" if folder == "streamreason" else f"streamreason.{folder}"
    return pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in PACKAGES.values() for p in sorted((ROOT / folder).glob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, at any depth of its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}


def _layer(module: str) -> tuple[str, int]:
    """``(unit, layer)`` of a module: its stage package, or itself for a core module."""
    for unit in sorted(LAYER, key=len, reverse=True):
        if module == unit or (unit != "streamreason" and module.startswith(unit + ".")):
            return unit, LAYER[unit]
    raise AssertionError(f"{module} has no layer: add it to LAYER in {__file__}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_walker_sees_lazy_imports_and_cycles():
    # the walker itself: a function-level import counts, and a two-module loop is a cycle
    src = "def f():\n    from streamreason.cli import main\n"
    tree_imports = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            tree_imports.add(node.module)
    assert tree_imports == {"streamreason.cli"}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_stage_module_imports_the_cli():
    offenders = [m for m, deps in _graph().items() if "streamreason.cli" in deps and _layer(m)[1] < 7]
    assert offenders == [], f"import the components from streamreason.stack, not the CLI: {offenders}"


def test_no_import_cycle_between_modules():
    assert _cycles(_graph()) == []


def test_no_import_cycle_between_packages():
    units: dict[str, set[str]] = defaultdict(set)
    for m, deps in _graph().items():
        for d in deps:
            if _layer(d)[0] != _layer(m)[0]:
                units[_layer(m)[0]].add(_layer(d)[0])
    assert _cycles(units) == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_point_downstream(module):
    unit, layer = _layer(module)
    stage = {
        "streamreason.envs",
        "streamreason.rollout",
        "streamreason.rewards",
        "streamreason.rl",
        "streamreason.evals",
    }

    def above(dep: str) -> bool:
        dep_unit, dep_layer = _layer(dep)
        return dep_layer > layer or (dep_layer == layer and dep_unit != unit and {unit, dep_unit} & stage)

    upward = sorted(d for d in _graph()[module] if above(d))
    assert upward == [], f"{module} (layer {layer}: {unit}) imports {upward}, which sit above or beside it"
