import json

import numpy as np
from matplotlib.image import imread
from rich.console import Console

from streamreason.rl.metrics import MetricsLogger
from streamreason.rl.report import summary_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _synthetic_run(run_dir, eval_every: int | None = 5, timing: bool = True):
    rng = np.random.default_rng(0)
    with MetricsLogger(run_dir, tensorboard=False) as metrics:
        for step in range(1, 41):
            fmt, timing_reward = min(1.0, step / 10), min(1.0, step / 40)
            metrics.log(
                step,
                {"reward": 0.5 * (fmt + timing_reward), "reward/format": fmt, "reward/timing": timing_reward},
            )
            if eval_every and step % eval_every == 0:
                metrics.log(step, {"reward": timing_reward, "reward/timing": timing_reward}, prefix="eval/")
    if timing:
        errors = {"sft": rng.normal(2.0, 1.5, 200).tolist(), "grpo": rng.normal(0.3, 0.6, 200).tolist()}
        (run_dir / "eval_timing_errors.json").write_text(json.dumps(errors))


def test_report_png_is_written(tmp_path):
    _synthetic_run(tmp_path)
    out = write_report(tmp_path)

    assert out == tmp_path / "report.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert out.stat().st_size > 20_000
    height, width, _ = imread(out).shape
    assert width > 2 * height  # three panels side by side


def test_missing_series_are_skipped(tmp_path):
    _synthetic_run(tmp_path, eval_every=None, timing=False)
    out = write_report(tmp_path, out_png=tmp_path / "figures" / "train_only.png")

    assert out.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(out).shape
    assert width < 2 * height  # the train panel alone
    assert not (tmp_path / "report.png").exists()


def test_summary_table_cells():
    rows = [
        {"model": "random init", "reward": (0.1234, 0.0101), "format": (0.5, 0.02), "|timing error| s": 4.25},
        {"model": "grpo", "reward": (0.6, 0.015), "format": (0.98, 0.004), "accuracy": (0.7, 0.03)},
    ]
    table = summary_table(rows, "eval on synth")
    console = Console(width=150, record=True)
    console.print(table)
    text = console.export_text()

    assert [column.header for column in table.columns] == [
        "model",
        "reward",
        "format",
        "|timing error| s",
        "accuracy",
    ]
    assert "eval on synth" in text
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    assert all(cell in lines["random init"] for cell in ("0.123 ± 0.010", "0.500 ± 0.020", "4.250", "—"))
    assert all(cell in lines["grpo"] for cell in ("0.600 ± 0.015", "0.980 ± 0.004", "0.700 ± 0.030", "—"))
