"""The synthetic benchmark (``--benchmark synthetic``): rows of ``streamreason data synth`` (or any
row JSONL), scored by ThinkStream's literal answers, with answer rate and timing error.

It has no result format of its own: its result file is the harness's ``predictions.jsonl``
(one line per question with the task, response, timing error and per-item score), from which
:meth:`SyntheticBench.official_score` computes the table, so ``streamreason eval score
--benchmark synthetic OUT`` prints it again from the harness's output folder.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from streamreason.answers import answers_match
from streamreason.envs.convert import ConvertReport
from streamreason.errors import ConfigError
from streamreason.evals.registry import PREDICTIONS, Benchmark, Prediction, register_benchmark
from streamreason.types import StreamRow, read_rows


@register_benchmark("synthetic")
class SyntheticBench(Benchmark):
    """Row JSONL in, per-task accuracy, answer rate and mean |timing error| out."""

    def convert_file(self, path: str, video_root: str | None) -> ConvertReport:
        """The file's rows (:func:`~streamreason.types.read_rows`: videos relative to the
        file's folder; ``video_root`` is not used); malformed lines are the report's errors."""
        rows, bad = read_rows(path)
        return ConvertReport(entries=len(rows) + len(bad), rows=rows, errors=bad)

    def item_score(self, row: StreamRow, prediction: Prediction) -> float | None:
        """1/0 by :func:`~streamreason.answers.answers_match` (no response is 0); None
        for a question without a ground truth."""
        if prediction.ground_truth is None:
            return None
        return float(answers_match(prediction.response, prediction.ground_truth))

    def write_results(self, anno: list[str], rows: list[StreamRow], preds: dict[str, list[Prediction]],
                      out_dir: Path, model_name: str) -> list[Path]:  # fmt: skip
        """Nothing new: the result file is the harness's ``predictions.jsonl``."""
        return [out_dir / PREDICTIONS]

    def official_score(self, files: list[Path], model_name: str):
        """Per task and over ``"all"``: ``questions``, ``accuracy`` (% of the per-item scores;
        an unscored question counts 0), ``answered`` (% with a response) and
        ``abs_timing_error_s`` (mean over the answered questions with an answer time, seconds;
        NaN when none), from ``predictions.jsonl``; and a rich table of them."""
        from rich.table import Table

        per: dict[str, list[dict]] = defaultdict(list)
        for line in files[0].read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            per[rec["task"] or "-"].append(rec)
        scores = {}
        table = Table(title=f"synthetic benchmark: {model_name}")
        for col in ("task", "questions", "accuracy %", "answered %", "|timing error| s"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for task in sorted(per) + ["all"]:
            items = [x for v in per.values() for x in v] if task == "all" else per[task]
            errs = [abs(p["timing_error_s"]) for p in items if p["timing_error_s"] is not None]
            n = max(len(items), 1)
            s = {"questions": len(items), "accuracy": 100 * sum(p["score"] or 0.0 for p in items) / n,
                 "answered": 100 * sum(p["response"] is not None for p in items) / n,
                 "abs_timing_error_s": sum(errs) / len(errs) if errs else math.nan}  # fmt: skip
            scores[task] = s
            table.add_row(task, str(s["questions"]), f"{s['accuracy']:.2f}", f"{s['answered']:.2f}",
                          f"{s['abs_timing_error_s']:.2f}")  # fmt: skip
        return scores, table

    def score_results_dir(self, results_dir: str | Path, model_name: str | None):
        """The table of ``results_dir/predictions.jsonl`` (a harness output folder);
        ``model_name`` defaults to the folder's name.

        Raises:
            ConfigError: the folder holds no ``predictions.jsonl``.
        """
        path = Path(results_dir) / PREDICTIONS
        if not path.is_file():
            raise ConfigError(
                f"{results_dir}: no {PREDICTIONS} (the output folder of eval --benchmark synthetic)"
            )
        return self.official_score([path], model_name or Path(results_dir).name)
