import json
import math
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from streamreason.errors import ConfigError, RowError
from streamreason.rl.metrics import (
    VERL_TRAIN_REWARD,
    MetricsLogger,
    is_reward_metric,
    read_metrics,
    read_verl_metrics,
)


def _tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _reject_non_json(constant: str):
    raise AssertionError(f"{constant} is not JSON")


def test_jsonl_round_trip_with_non_finite_values(tmp_path):
    start = time.time()
    with MetricsLogger(tmp_path) as metrics:
        metrics.log(1, {"reward": 0.5, "loss": math.nan, "grad_norm": math.inf})
        metrics.log(1, {"reward": 0.25}, prefix="eval/")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    for line in lines:
        json.loads(line, parse_constant=_reject_non_json)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [{k: v for k, v in row.items() if k != "time"} for row in rows] == [
        {"step": 1, "reward": 0.5, "loss": None, "grad_norm": None},
        {"step": 1, "eval/reward": 0.25},
    ]
    assert start <= rows[0]["time"] <= time.time()


def test_tensorboard_gets_finite_scalars_only(tmp_path):
    with MetricsLogger(tmp_path) as metrics:
        metrics.log(1, {"reward": 0.5, "loss": math.nan})
        metrics.log(2, {"reward": 0.75}, prefix="eval/")

    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert _tensorboard_scalars(tmp_path) == {"reward": [(1, 0.5)], "eval/reward": [(2, 0.75)]}


def test_lines_are_flushed_as_logged(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as metrics:
        metrics.log(3, {"reward": 1.0})
        assert read_metrics(tmp_path / "metrics.jsonl")[0]["reward"] == 1.0
    assert not (tmp_path / "tensorboard").exists()


def test_only_rank_zero_writes(tmp_path):
    with MetricsLogger(tmp_path, rank=1) as metrics:
        metrics.log(1, {"reward": 0.5})
        metrics.truncate_after(0)
    assert list(tmp_path.iterdir()) == []


def test_truncate_after_drops_later_steps_on_resume(tmp_path):
    with MetricsLogger(tmp_path) as metrics:
        for step in range(1, 6):
            metrics.log(step, {"reward": step / 10})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "rew')  # torn by the crash

    with MetricsLogger(tmp_path) as metrics:  # resumed from the checkpoint of step 3
        metrics.truncate_after(3)
        metrics.log(4, {"reward": 0.9})

    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(row["step"], row["reward"]) for row in rows] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.9)]
    steps, values = zip(*_tensorboard_scalars(tmp_path)["reward"])
    assert steps == (1, 2, 3, 4) and values == pytest.approx((0.1, 0.2, 0.3, 0.9))


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RowError, match=r"metrics\.jsonl:2"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_reserved_names_are_refused(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as metrics, pytest.raises(ValueError, match="step"):
        metrics.log(1, {"step": 2.0})


def test_missing_wandb_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ConfigError, match="pip install wandb"):
        MetricsLogger(tmp_path, wandb_project="streamreason")


KEYS = ["reward", "reward/timing", "reward/format", "reward_std", "reward/timing_std", "eval/reward",
        "eval/reward/timing", "eval/reward_stderr", "eval/reward/timing_stderr", "eval/accuracy",
        "eval/accuracy_stderr", "accuracy", "rewards", "reward_failed", "eval/rewards", "sft/loss",
        "loss", "eval/eval/reward", "x/reward", "critic/score/mean"]  # fmt: skip


def test_one_reward_rule_gives_what_sweep_and_report_each_chose_before():
    def sweep_rule(key):  # rl/sweep.py _is_reward until issue 17
        base = key.removeprefix("eval/")
        return (
            base == "reward" or base.startswith("reward/") or key == "eval/accuracy"
        ) and not key.endswith(("_std", "_stderr"))

    def report_rule(key, prefix):  # rl/report.py _reward_series until issue 17
        total = f"{prefix}reward"
        return (key == total or key.startswith(total + "/")) and not key.endswith(("_std", "_stderr"))

    from streamreason.rl.sweep import _tracked

    for key in KEYS:
        assert _tracked(key) == sweep_rule(key), key
        for prefix in ("", "eval/"):
            assert is_reward_metric(key, prefixes=(prefix,)) == report_rule(key, prefix), (key, prefix)


def test_verl_metrics_read_as_our_records(tmp_path, monkeypatch):
    """verl's names, made by verl's own code from our agent loop's ``reward_extra_info`` and
    written by verl's file logger, come back as ``reward``, ``eval/reward`` and
    ``eval/reward/NAME``."""
    import inspect

    from verl.trainer.ppo.metric_utils import compute_data_metrics
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.tracking import FileLogger

    assert f'"{VERL_TRAIN_REWARD}"' in inspect.getsource(compute_data_metrics)
    # what PPOTrainer._validate collects: two eval rows of two samples; row b lost one (a bad video)
    infos = {"reward": [0.2, 0.4, 0.9], "reward/timing": [0.0, 1.0, 0.5], "reward/format": [1.0, 1.0, 1.0]}
    val = PPOTrainer._val_metrics_update(None, ["streamreason"] * 3, ["a", "a", "b"], infos, [4, 4, 4])
    assert val["val-core/streamreason/reward/mean@2"] == pytest.approx(0.3)  # row a's mean
    path = tmp_path / "verl_metrics.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("streamreason", "run")
    logger.log({VERL_TRAIN_REWARD: 0.5, "actor/pg_loss": 0.01, "training/global_step": 1}, step=1)
    logger.log({VERL_TRAIN_REWARD: 0.6, **val}, step=2)
    logger.finish()

    first, second = read_verl_metrics(tmp_path / "missing.jsonl", path)
    assert first == {"step": 1, "reward": 0.5, VERL_TRAIN_REWARD: 0.5, "actor/pg_loss": 0.01,
                     "training/global_step": 1}  # fmt: skip
    assert sorted(k for k in second if is_reward_metric(k)) == [
        "eval/reward", "eval/reward/format", "eval/reward/timing", "reward"]  # fmt: skip
    assert second["reward"] == 0.6
    assert second["eval/reward"] == pytest.approx(0.3)  # the largest sample count, as verl's val-core
    assert second["eval/reward/timing"] == pytest.approx(0.5)
    assert second["eval/reward/format"] == pytest.approx(1.0)
