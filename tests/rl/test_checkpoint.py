import json
import logging
import random

import numpy as np
import pytest
import torch

from streamreason.errors import CheckpointError, ConfigError
from streamreason.rl.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _trainer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step)
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler, batch):
    optimizer.zero_grad()
    model(batch).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()


def _draws():
    draws = [random.random(), np.random.rand(3).tolist(), np.random.randn(2).tolist(), torch.rand(3).tolist()]
    if torch.cuda.is_available():
        draws.append(torch.rand(3, device="cuda").tolist())
    return draws


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((256,), float(step))}, "trainer": {"step": step}}


def test_round_trip_restores_training_and_rng_exactly(tmp_path):
    model, optimizer, scheduler = _trainer(seed=0)
    for _ in range(3):
        _train_step(model, optimizer, scheduler, torch.randn(5, 4))
    trainer = {"step": 3, "rows_seen": 15, "data_order": [2, 0, 1]}
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "trainer": trainer,
    }
    path = save_checkpoint(tmp_path, 3, state)
    after_save = _draws()

    resumed = _trainer(seed=1)
    step, loaded = load_checkpoint(latest_checkpoint(tmp_path))
    for obj, name in zip(resumed, ("model", "optimizer", "scheduler")):
        obj.load_state_dict(loaded[name])
    set_rng_state(loaded["rng"])

    assert path == tmp_path / "checkpoints" / "step_00000003"
    assert step == 3 and loaded["trainer"] == trainer
    assert json.loads((path / "manifest.json").read_text())["json"]["trainer"] == trainer
    assert _draws() == after_save
    # One more identical step on both: equal weights prove model, Adam moments and lr schedule.
    batch = torch.randn(5, 4)
    _train_step(model, optimizer, scheduler, batch)
    _train_step(*resumed, batch)
    for original, restored in zip(model.parameters(), resumed[0].parameters()):
        torch.testing.assert_close(restored, original, rtol=0, atol=0)
    assert resumed[2].get_last_lr() == scheduler.get_last_lr()


def _truncate(file):
    file.write_bytes(file.read_bytes()[:-100])


def _flip_last_byte(file):
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, r"file model\.pt is \d+ bytes, manifest says \d+: truncated"),
        (_flip_last_byte, r"file model\.pt has a sha256 other than the manifest's"),
        (lambda file: file.unlink(), r"file model\.pt is missing"),
        (lambda file: (file.parent / "manifest.json").unlink(), r"no manifest\.json"),
        (lambda file: (file.parent / "manifest.json").write_text('{"step": 2, "fi'), "not valid JSON"),
    ],
)
def test_damaged_checkpoint_is_skipped_and_refused(tmp_path, caplog, damage, message):
    save_checkpoint(tmp_path, 1, _state(1))
    damaged = save_checkpoint(tmp_path, 2, _state(2))
    damage(damaged / "model.pt")

    with caplog.at_level(logging.WARNING, logger="streamreason.rl.checkpoint"):
        latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "checkpoints" / "step_00000001"
    assert "step_00000002" in caplog.text
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(damaged)
    assert "step_00000002" in str(error.value)
    assert load_checkpoint(latest)[1]["model"]["w"][0] == 1.0


def test_leftover_temp_folder_is_ignored(tmp_path, caplog):
    save_checkpoint(tmp_path, 1, _state(1))
    crashed = tmp_path / "checkpoints" / ".tmp-step_00000002-abc123"
    crashed.mkdir()
    (crashed / "model.pt").write_bytes(b"half a tensor")

    with caplog.at_level(logging.WARNING, logger="streamreason.rl.checkpoint"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000001"
    assert crashed.name in caplog.text


def test_pruning_keeps_the_newest_complete(tmp_path):
    for step in (5, 10, 20, 30):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000020", "step_00000030"]  # and no temp folder left

    (tmp_path / "checkpoints" / "step_00000040").mkdir()  # no manifest: does not count
    save_checkpoint(tmp_path, 50, _state(50), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000030", "step_00000040", "step_00000050"]


def test_resaving_a_step_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 7, _state(1))
    save_checkpoint(tmp_path, 7, _state(2))
    assert load_checkpoint(tmp_path / "checkpoints" / "step_00000007")[1]["model"]["w"][0] == 2.0


def test_no_checkpoint_and_bad_keep(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(ConfigError, match="keep=0"):
        save_checkpoint(tmp_path, 1, _state(1), keep=0)
