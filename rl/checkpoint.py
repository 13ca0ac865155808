"""Atomic, self-verifying training checkpoints, and the RNG state that makes a resume exact.

Layout of one checkpoint::

    run_dir/checkpoints/step_00000120/
        model.pt optimizer.pt trainer.pt   one torch.save file per entry that JSON cannot hold exactly
        manifest.json                      written last: step, the other entries, file sizes and sha256

A save writes into a ``.tmp-*`` folder beside the final one, fsyncs every file, writes the
manifest last and renames the folder into place, so a crash leaves either a complete checkpoint
or a temp folder that :func:`latest_checkpoint` skips. Files are read back with
``torch.load(weights_only=True)``, so loading a checkpoint cannot run code: entries must hold
only tensors and containers of numbers, strings and None, as model, optimizer and scheduler state
dicts and :func:`rng_state` do (anything else makes ``torch.load`` raise, naming the type).

Example (``Learner.state_dict()`` gives full CPU state dicts, under FSDP too)::

    state = {**learner.state_dict(), "trainer": {"step": step, "sampler": ..., "rng": rng_state()}}
    save_checkpoint(run_dir, step, state, keep=2)
    ...
    if (path := latest_checkpoint(run_dir)) is not None:
        step, state = load_checkpoint(path)
        learner.load_state_dict(state)
        set_rng_state(state["trainer"]["rng"])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamreason.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

_MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically, then prune older checkpoints.

    Args:
        run_dir: the run folder; the checkpoint goes to ``run_dir/checkpoints/step_{step:08d}``
            (replacing one of the same step, e.g. after resuming from an earlier checkpoint).
        step: the optimizer step the state is at.
        state: entry name (a file-name stem) → object. An entry that survives a JSON round trip
            unchanged (e.g. ``{"step": 120, "rows_seen": 3840}``) is stored in the manifest,
            readable with any JSON tool; any other (state dicts, :func:`rng_state`) is
            ``torch.save``-d to ``<name>.pt``.
        keep: how many complete checkpoints (those with a manifest) to keep, newest steps first,
            this one included.

    Returns:
        The checkpoint folder.

    Raises:
        ConfigError: ``keep`` < 1.
    """
    if keep < 1:
        raise ConfigError(f"checkpoint keep={keep}: keep at least 1 checkpoint")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=root))
    manifest: dict[str, Any] = {"step": step, "json": {}, "files": {}}
    for name, obj in state.items():
        if _survives_json(obj):
            manifest["json"][name] = obj
            continue
        file = tmp / f"{name}.pt"
        with open(file, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        manifest["files"][file.name] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}
    with open(tmp / _MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # os.replace cannot overwrite a non-empty folder
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in [p for p in _step_dirs(root) if (p / _MANIFEST).is_file()][:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none.

    Every file is checked against the manifest (size and sha256). Incomplete or corrupt
    checkpoints and temp folders left by an interrupted save are skipped with a warning on the
    ``streamreason.rl.checkpoint`` logger naming the folder.
    """
    root = Path(run_dir) / "checkpoints"
    for tmp in sorted(root.glob(f"{_TMP_PREFIX}*")):
        logger.warning("skipping %s: temp folder of an interrupted save; delete it", tmp)
    for path in reversed(_step_dirs(root)):
        try:
            _verified_manifest(path)
        except CheckpointError as err:
            logger.warning("skipping %s", err)
            continue
        return path
    return None


def load_checkpoint(path: str | Path) -> tuple[int, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, after verifying every file.

    Returns:
        ``(step, state)`` with ``state`` keyed as it was saved; tensors are on the CPU.

    Raises:
        CheckpointError: the manifest is missing or not valid JSON, or a file is missing or
            differs in size or sha256 from the manifest.
    """
    path = Path(path)
    manifest = _verified_manifest(path)
    state = dict(manifest["json"])
    for name in manifest["files"]:
        state[name.removesuffix(".pt")] = torch.load(path / name, map_location="cpu", weights_only=True)
    return manifest["step"], state


def rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's global generator, torch's CPU generator and
    every CUDA device's generator (when CUDA is available), as weights_only-loadable types."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # 624 uint32 words
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`rng_state`, so later draws repeat exactly.

    CUDA states are restored only where CUDA is available (a GPU run can resume on a CPU).
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _verified_manifest(path: Path) -> dict[str, Any]:
    """The manifest of checkpoint folder ``path``, after checking every file's size and sha256.

    Raises:
        CheckpointError: naming the folder and what is wrong.
    """
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(path, f"no {_MANIFEST}: the save did not finish") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"{_MANIFEST} is not valid JSON ({err})") from None
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(path, f"file {name} is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            what = "truncated" if size < expected["bytes"] else "changed since the save"
            raise CheckpointError(
                path, f"file {name} is {size} bytes, manifest says {expected['bytes']}: {what}"
            )
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(path, f"file {name} has a sha256 other than the manifest's: corrupt")
    return manifest


def _survives_json(obj: Any) -> bool:
    """Whether ``obj`` comes back equal from JSON: no tensors, tuples, int keys or NaN."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False)) == obj
    except (TypeError, ValueError):
        return False


def _sha256(file: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new files, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_dirs(root: Path) -> list[Path]:
    """The ``step_<digits>`` folders under ``root``, oldest step first."""
    dirs = [p for p in root.glob("step_*") if p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]))
