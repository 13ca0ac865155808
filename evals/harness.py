"""Streaming benchmark harness: ``streamreason eval --benchmark NAME`` for any registered benchmark.

The benchmark (:mod:`streamreason.evals.registry`) turns its annotations into streams; the
policy watches each stream with the recipe's protocol, memory and engine (greedy unless the
recipe's overrides say otherwise); the response to each question is the first response turn at
or after the chunk where it is asked and before the next question (the attribution of
:func:`~streamreason.rewards.outcomes.attributed_responses`). The benchmark writes the responses
in its own result format and scores those files by its own rules, so that ``streamreason eval
score`` on the written files prints the same numbers. Nothing here depends on which benchmark
runs.

Outputs in ``out_dir``:

* ``predictions.jsonl``: one line per question: row id, task, times, ground truth, response,
  response time (seconds: end of the response's chunk) and the benchmark's per-item score.
* the benchmark's result files (:meth:`~streamreason.evals.registry.Benchmark.write_results`):
  ``ovo/<name>/<name>_<tasks>_offline_1.json`` (OVO-Bench), ``real_output_<name>.json`` /
  ``proactive_output_<name>.json`` (StreamingBench); the synthetic benchmark scores
  ``predictions.jsonl``.
* ``scores.json``: the scores; ``failures.txt``: rows whose video failed, when any.
"""

from __future__ import annotations

import json
from pathlib import Path

from streamreason.errors import ConfigError
from streamreason.evals.registry import PREDICTIONS, Prediction, get_benchmark
from streamreason.rewards.outcomes import attributed_responses
from streamreason.types import StreamRow


def predictions(traj) -> list[Prediction]:
    """One :class:`Prediction` per query of a trajectory."""
    ep = traj.episode()
    out = []
    for i, (q, turns) in enumerate(attributed_responses(ep)):
        asked = ep.chunk_of(q.time_s)
        first = next((t for t in turns if t.chunk_index >= asked), None)
        polls = tuple((t.end_s, t.response if t.action == "response" else "") for t in ep.turns
                      if t.chunk_index >= asked and (first is None or t.chunk_index <= first.chunk_index))  # fmt: skip
        p = Prediction(traj.row.id, traj.row.task, i, q.time_s, q.answer_time_s, q.answer, polls=polls)
        if first is not None:
            p.response, p.response_s = first.response, first.end_s
            if q.answer_time_s is not None:
                p.timing_error_s = (first.chunk_index - ep.chunk_of(q.answer_time_s)) * ep.chunk_seconds
        out.append(p)
    return out


def missed(row: StreamRow) -> list[Prediction]:
    """Predictions without responses for a row that failed (its video could not be read)."""
    qs = sorted(row.queries, key=lambda q: q.time_s)
    return [Prediction(row.id, row.task, i, q.time_s, q.answer_time_s, q.answer) for i, q in enumerate(qs)]


def run_benchmark(benchmark: str, cfg, *, anno: list[str], video_root: str | None, out_dir: str | Path,
                  name: str, tasks: list[str] | None = None, limit: int | None = None, batch_rows: int = 8,
                  console=None, stack: tuple | None = None) -> dict:  # fmt: skip
    """Evaluate ``cfg.model`` on a benchmark; write predictions, official files and scores.

    Args:
        benchmark: a registered benchmark's name (:func:`~streamreason.evals.registry.list_benchmarks`).
        cfg: the recipe (rollout settings, engine, model).
        anno: annotation files (OVO-Bench: ``ovo_bench_new.json``; StreamingBench:
            ``questions_real.json`` and/or ``questions_proactive.json``; synthetic: row JSONL).
        video_root: folder the annotations' video paths are relative to.
        out_dir: where outputs go (created).
        name: the model's name in result files and tables.
        tasks: keep only these tasks (e.g. ``["EPM", "REC"]``).
        limit: keep only the first ``limit`` streams.
        stack: ``(encoder, engine)`` to roll out with instead of the recipe's (e.g. a scripted
            engine); None builds the recipe's.

    Returns:
        ``{"scores", "rows", "failed", "conversion", "files"}``.

    Raises:
        ConfigError: unknown benchmark, missing annotation file, or nothing left to evaluate.
    """
    from rich.console import Console
    from tqdm.auto import tqdm

    from streamreason.rollout.loop import run_rollouts
    from streamreason.stack import build_policy, make_env_pool

    bench = get_benchmark(benchmark)
    console = console or Console(width=160)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, info = bench.rows(anno, video_root)
    if tasks:
        rows = [r for r in rows if r.task in set(tasks)]
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ConfigError(f"no {benchmark} streams to evaluate (check --anno, --tasks, --limit)")
    missing = set(info["missing_videos"]) & {r.id for r in rows}
    info["missing_videos"] = len(missing)
    if info["errors"] or missing:
        console.print(f"[yellow]{len(info['errors'])} annotation entries did not convert; {len(missing)} of the "
                      f"{len(rows)} streams name a missing video (unanswered: scored as wrong)[/]")  # fmt: skip
    if stack is None:
        policy = build_policy(cfg)
        stack = (policy.encoder, policy.engine)
    encoder, engine = stack
    preds: dict[str, list[Prediction]] = {}
    failures = []
    with make_env_pool(cfg) as pool, \
            tqdm(total=len(rows), desc=f"{benchmark} streams", unit="stream") as bar:  # fmt: skip
        for i in range(0, len(rows), batch_rows):
            batch = rows[i : i + batch_rows]
            trajs, fails = run_rollouts(batch, pool=pool, engine=engine, encoder=encoder, cfg=cfg.rollout,
                                        group_size=1)  # fmt: skip
            for t in trajs:
                preds[t.row.id] = predictions(t)
            failures += fails
            bar.update(len(batch))
    by_id = {r.id: r for r in rows}
    for f in failures:
        preds[f.row_id] = missed(by_id[f.row_id])
    with open(out_dir / PREDICTIONS, "w", encoding="utf-8") as fh:
        for row in rows:
            for p in preds[row.id]:
                rec = {k: v for k, v in p.__dict__.items() if k != "polls"}
                rec["score"] = bench.item_score(by_id[row.id], p)
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if failures:
        (out_dir / "failures.txt").write_text("".join(f"{f.row_id}\t{f.error}\n" for f in failures))
    files = bench.write_results(anno, rows, preds, out_dir, name)
    scores, printable = bench.official_score(files, name)
    console.print(printable)
    console.print(f"{len(rows)} streams, {len(failures)} failed (video unreadable; unanswered: scored as wrong); "
                  f"predictions in {out_dir / PREDICTIONS}")  # fmt: skip
    summary = {"benchmark": benchmark, "model": name, "scores": scores, "rows": len(rows),
               "failed": len(failures), "conversion": info, "files": [str(f) for f in files]}  # fmt: skip
    (out_dir / "scores.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
