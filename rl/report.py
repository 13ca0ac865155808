"""The run report: reward curves and timing-error histograms in one PNG, and comparison tables.

``write_report(run_dir)`` reads the run's metrics (``RunDir.read_metrics``: ``metrics.jsonl``,
or verl's ``verl_metrics.jsonl`` with its reward metrics under our names; see
:mod:`streamreason.rl.run_dir`) and, when present, ``run_dir/eval_timing_errors.json``: model name → signed timing errors in
seconds (``QueryOutcome.timing_error_s``: answer chunk − evidence chunk, × ``chunk_seconds``;
negative = early), e.g. ``{"sft": [...], "grpo": [...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from streamreason.rl.metrics import is_reward_metric
from streamreason.rl.run_dir import RunDir


def write_report(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """Plot a run's reward curves and timing errors into one PNG.

    Panels, each left out when it has no data: (a) train ``reward`` and every
    ``reward/<component>`` against step; (b) the same for eval (``eval/`` keys); (c) histograms
    of the signed timing errors (seconds) of each model in ``eval_timing_errors.json``, overlaid
    on shared bins.

    Args:
        run_dir: the run folder (either backend's).
        out_png: where to write the figure; default ``run_dir/report.png``.

    Returns:
        The PNG's path.

    Raises:
        FileNotFoundError: the run has no metrics file.
        RowError: a line of it is malformed (:func:`~streamreason.rl.metrics.read_metrics`).
    """
    run_dir = Path(run_dir)
    out_png = Path(out_png) if out_png is not None else run_dir / "report.png"
    rows = RunDir(run_dir).read_metrics()
    timing_file = run_dir / "eval_timing_errors.json"
    timing_errors = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    timing_errors = {name: errors for name, errors in timing_errors.items() if errors}

    train, evals = _reward_series(rows, ""), _reward_series(rows, "eval/")
    n_panels = bool(train) + bool(evals) + bool(timing_errors)
    fig = Figure(figsize=(5.5 * max(n_panels, 1), 4.0), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever pyplot's backend is
    axes = iter(fig.subplots(1, max(n_panels, 1), squeeze=False)[0])
    if train:
        _plot_series(next(axes), train, "train reward")
    if evals:
        _plot_series(next(axes), evals, "eval reward")
    if timing_errors:
        _plot_timing(next(axes), timing_errors)
    if not n_panels:
        ax = next(axes)
        ax.text(0.5, 0.5, f"no reward or timing data in {run_dir}", ha="center", va="center")
        ax.set_axis_off()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def summary_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """A rich table comparing models, one row per dict, columns in first-seen key order.

    Cells: ``(mean, stderr)`` → ``"0.512 ± 0.021"``; a number → ``"0.512"``; a missing key or
    None → ``"—"``; anything else → ``str``. Every column but the first is right-aligned.

    Example::

        rich.print(summary_table([{"model": "sft", "reward": (0.41, 0.02)},
                                  {"model": "grpo", "reward": (0.58, 0.02)}], "eval"))
    """
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    return table


def _reward_series(rows: list[dict[str, Any]], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """``prefix + "reward"`` and every ``prefix + "reward/<component>"`` → (steps, values)
    (:func:`~streamreason.rl.metrics.is_reward_metric`: no spread statistics), skipping nulls;
    the total first, then components by name."""
    total = f"{prefix}reward"
    keys = {k for row in rows for k in row if is_reward_metric(k, prefixes=(prefix,))}
    series = {}
    for key in sorted(keys, key=lambda k: (k != total, k)):
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        if points:
            steps, values = zip(*points)
            series[key] = (list(steps), list(values))
    return series


def _plot_series(ax: Axes, series: dict[str, tuple[list[int], list[float]]], title: str) -> None:
    for key, (steps, values) in series.items():
        total = key.endswith("reward")
        few = len(steps) < 10  # evals: markers, so a single point shows
        ax.plot(
            steps,
            values,
            label=key,
            linewidth=2.0 if total else 1.0,
            marker="o" if few else ("." if total else None),
        )
    ax.set(title=title, xlabel="step", ylabel="mean reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _plot_timing(ax: Axes, timing_errors: dict[str, list[float]]) -> None:
    bins = np.histogram_bin_edges(np.concatenate([np.asarray(e, float) for e in timing_errors.values()]), 30)
    for name, errors in timing_errors.items():
        mean_abs = float(np.mean(np.abs(errors)))
        ax.hist(errors, bins=bins, alpha=0.5, label=f"{name} (n={len(errors)}, mean |e|={mean_abs:.2f} s)")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set(title="timing error", xlabel="answer time − evidence time (s)", ylabel="count")
    ax.legend(fontsize="small")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]:.3f} ± {value[1]:.3f}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3f}"
    return str(value)
