"""Typed configs from YAML files and ``key=value`` overrides (OmegaConf), for any schema.

The loader behind recipes (:mod:`streamreason.config`) and behind every job that reads a
section of a resolved recipe back (the verl agent loop in its Ray workers). It knows no
schema of its own, so stage packages can use it without importing the recipe.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from streamreason.errors import ConfigError, StreamReasonError

# What merging a layer into the schema raises on a bad value: OmegaConf's errors, and an int too
# large for a float field (OmegaConf re-raises the OverflowError with the key in its text).
_BAD_VALUE = (OmegaConfBaseException, OverflowError)


def valid_keys(node: DictConfig, prefix: str = "", *, free_form: bool = False) -> list[str]:
    """Every dotted key under ``node``: sections and their fields, for "did you mean" hints.

    A structured config's free-form dict fields (``rewards.weights``) hold user keys, so they are
    not descended into unless ``free_form`` (an unstructured config such as verl's, where every
    section is a plain dict). None-valued sections have no keys below them.
    """
    keys = []
    for k in node:
        full = f"{prefix}{k}"
        keys.append(full)
        child = node._get_node(k)
        descend = free_form or OmegaConf.get_type(child) not in (dict, None)
        if isinstance(child, DictConfig) and not child._is_none() and descend:
            keys.extend(valid_keys(child, f"{full}.", free_form=free_form))
    return keys


def load_structured(path: str | Path | None, overrides: list[str] | tuple[str, ...], schema: type):
    """Build a typed config from a recipe file and ``key=value`` overrides.

    Args:
        path: YAML recipe, or None for the schema's defaults.
        overrides: dotlist entries, e.g. ``["rollout.memory.window_chunks=8"]``.
        schema: the dataclass the recipe follows.

    Returns:
        an instance of ``schema`` (validated by each section's ``__post_init__``).

    Raises:
        ConfigError: unknown key (naming it and the closest valid key), wrong type or bad value
            (naming the key, and the override it came from), an override that is not
            ``key=value`` or whose value is not YAML, a missing or unparsable recipe file, or one
            that is not a mapping.
    """
    base = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"recipe {str(path)!r} does not exist")
        try:
            recipe = OmegaConf.load(path)
        except Exception as e:  # yaml errors come in several types
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(recipe, DictConfig):
            raise ConfigError(f"recipe {str(path)!r} must be a mapping of config keys, not a list")
        layers.append(("recipe " + str(path), recipe))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        # One layer per override, so that an error names the override it comes from.
        try:
            layers.append((f"command line {item!r}", OmegaConf.from_dotlist([item])))
        except Exception as e:  # the value is not YAML (`k=,`), or OmegaConf rejects the key
            reason = " ".join(str(e).split())
            raise ConfigError(f"override {item!r} does not parse ({reason}); quote the value") from None
    cfg = base
    for where, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except ConfigKeyError as e:
            key = e.full_key or str(e.key)
            close = difflib.get_close_matches(key, [k for k in valid_keys(base) if k != key], n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r} ({where}){hint}") from None
        except _BAD_VALUE as e:
            key = getattr(e, "full_key", None) or _failing_key(cfg, layer)
            msg = getattr(e, "msg", None) or str(e).splitlines()[0]
            raise ConfigError(f"bad value for {key!r} ({where}): {msg}") from None
    # A recipe marks what the user must supply with ???; merging keeps the schema's default
    # there, so check the recipe itself against the overrides.
    given = {item.split("=", 1)[0] for item in overrides}
    try:
        missing = sorted(
            k for _, layer in layers[:1] if path is not None for k in OmegaConf.missing_keys(layer)
        )
    except OmegaConfBaseException as e:  # an interpolation that does not resolve
        raise ConfigError(f"bad value for {e.full_key!r} (recipe {str(path)}): {e.msg}") from None
    missing = [k for k in missing if k not in given]
    if missing:
        raise ConfigError(f"recipe {str(path)!r} needs {missing}: pass them, e.g. {missing[0]}=...")
    try:
        return OmegaConf.to_object(cfg)
    except StreamReasonError:
        raise
    except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve
        raise ConfigError(f"bad value for {e.full_key!r}: {e.msg}") from None
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None


def _failing_key(cfg: DictConfig, layer: DictConfig, prefix: str = "") -> str:
    """The dotted key of ``layer`` that does not merge into ``cfg``, as deep as it goes
    (OmegaConf leaves ``full_key`` empty when a section is replaced by a value of the wrong type)."""
    for key in layer:
        try:
            OmegaConf.merge(cfg, OmegaConf.masked_copy(layer, [key]))
        except _BAD_VALUE:
            mine, theirs = cfg._get_node(key), layer._get_node(key)
            if isinstance(mine, DictConfig) and isinstance(theirs, DictConfig):
                return _failing_key(mine, theirs, f"{prefix}{key}.") or f"{prefix}{key}"
            return f"{prefix}{key}"
    return ""


def to_yaml(cfg) -> str:
    """The resolved config as YAML (for run directories and logs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_sections(path: str | Path, schemas: dict[str, type]) -> SimpleNamespace:
    """Some sections of a resolved recipe file (a run directory's ``config.yaml``), typed.

    For a process that needs part of a recipe without the recipe's schema (the verl agent loop
    in its Ray workers reads ``rollout`` and ``rewards``).

    Args:
        path: the YAML file.
        schemas: section key -> its dataclass, e.g. ``{"rollout": RolloutConfig}``.

    Returns:
        a namespace with one attribute per section (``ns.rollout``), each an instance of its
        dataclass, so it stands in for the recipe where only these sections are read.

    Raises:
        ConfigError: the file or a section is missing, or a value does not fit its schema.
    """
    if not Path(path).is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist")
    raw = OmegaConf.load(path)
    out = SimpleNamespace()
    for key, schema in schemas.items():
        if key not in raw:
            raise ConfigError(f"recipe {str(path)!r} has no {key!r} section")
        try:
            setattr(out, key, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw[key])))
        except StreamReasonError:
            raise
        except _BAD_VALUE as e:
            raise ConfigError(f"recipe {str(path)!r}, section {key!r}: {e}") from None
    return out
