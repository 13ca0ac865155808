"""Streaming benchmark harness: ``streamreason eval --benchmark ovo|streamingbench|synthetic``.

The benchmark's annotations become streams (:mod:`streamreason.envs.convert`); the policy
watches each stream with the recipe's protocol, memory and engine (greedy unless the recipe's
overrides say otherwise); the response to each question is the first response turn at or after
the chunk where it is asked and before the next question (the attribution of
:func:`~streamreason.rewards.outcomes.attributed_responses`). The responses are written in the
benchmark's own result format, which the official rules then score, so that
``streamreason eval score`` on the written files prints the same numbers.

Outputs in ``out_dir``:

* ``predictions.jsonl``: one line per question: row id, task, times, ground truth, response,
  response time (seconds: end of the response's chunk) and the official per-item score.
* the benchmark's result files: ``ovo/<name>/<name>_<tasks>_offline_1.json`` (OVO-Bench),
  ``real_output_<name>.json`` / ``proactive_output_<name>.json`` (StreamingBench).
* ``scores.json``: the scores; ``failures.txt``: rows whose video failed, when any.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamreason.envs.convert import read_source
from streamreason.errors import ConfigError
from streamreason.evals import ovo, streamingbench
from streamreason.rewards.outcomes import attributed_responses
from streamreason.types import StreamRow, read_rows

BENCHMARKS = ("ovo", "streamingbench", "synthetic")


@dataclass
class Prediction:
    """The policy's response to one question.

    Attributes:
        row_id, task: the stream and its task.
        query: index of the question in the stream (time order).
        asked_s, answer_time_s: when it is asked / answerable, seconds.
        ground_truth: the annotation's answer.
        response: the response text, or None (silent until the stream ended, or the row failed).
        response_s: end of the response's chunk, seconds (None without a response).
        timing_error_s: ``(response chunk - answerable chunk) * chunk_seconds``, seconds
            (negative: before the evidence); None without a response or an answer time.
        polls: ``(time, text)`` of every turn from the question on, until the response
            (StreamingBench proactive records them).
    """

    row_id: str
    task: str | None
    query: int
    asked_s: float
    answer_time_s: float | None
    ground_truth: str | None
    response: str | None = None
    response_s: float | None = None
    timing_error_s: float | None = None
    polls: tuple[tuple[float, str], ...] = ()


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


def load_benchmark_rows(
    benchmark: str, anno: list[str], video_root: str | None
) -> tuple[list[StreamRow], dict]:
    """Streams of a benchmark's annotation files, and what the conversion found
    (``{"entries": int, "errors": [str], "missing_videos": [row id]}``).

    StreamingBench files are told apart by their questions (proactive ones carry
    ``ground_truth_output``). For ``synthetic`` the files are row JSONL (``data synth``).

    Raises:
        ConfigError: unknown benchmark, or no annotation file.
    """
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if not anno:
        raise ConfigError(f"--benchmark {benchmark} needs --anno (the annotation file)")
    rows: list[StreamRow] = []
    info = {"entries": 0, "errors": [], "missing_videos": []}
    for path in anno:
        if not Path(path).is_file():
            raise ConfigError(f"annotation file {path!r} does not exist")
        if benchmark == "synthetic":
            got, bad = read_rows(path)
            rows += got
            info["entries"] += len(got) + len(bad)
            info["errors"] += [str(e) for e in bad]
            continue
        fmt = "ovo" if benchmark == "ovo" else _streamingbench_format(path)
        report = read_source(fmt, path, video_root)
        rows += report.rows
        info["entries"] += report.entries
        info["errors"] += [str(e) for e in report.errors]
        info["missing_videos"] += [rid for rid, _ in report.missing_videos]
    return rows, info


def _streamingbench_format(path: str) -> str:
    proactive = streamingbench.is_proactive(streamingbench.load_questions(path))
    return "streamingbench-proactive" if proactive else "streamingbench-real"


def item_score(benchmark: str, row: StreamRow, p: Prediction) -> float | None:
    """The official per-question score of a prediction (1/0; no response is 0), or None for a
    synthetic question without a ground truth."""
    if benchmark == "ovo":
        if row.task == "REC":
            return float(ovo.score_rec(p.response, p.ground_truth))
        if row.task in ("SSR", "CRR"):
            return float(ovo.score_yes_no(p.response, int(p.ground_truth == "Yes")))
        return float(ovo.score_choice(p.response, p.ground_truth))
    if benchmark == "streamingbench":  # silence is wrong (evals/streamingbench.py)
        if row.id.startswith("sb-proactive"):
            if p.response is None:
                return 0.0
            return float(streamingbench.proactive_correct(p.response_s, p.response, p.answer_time_s,
                                                          p.ground_truth)[1])  # fmt: skip
        return float(streamingbench.real_time_correct(p.response, p.ground_truth))
    from streamreason.rewards.answers import answers_match

    return None if p.ground_truth is None else float(answers_match(p.response, p.ground_truth))


def write_official(benchmark: str, anno: list[str], rows: list[StreamRow], preds: dict[str, list[Prediction]],
                   out_dir: Path, name: str) -> list[Path]:  # fmt: skip
    """Write the benchmark's own result files for the evaluated rows; returns their paths.

    A question without a response is written so that the official scorer reads it and scores
    it wrong: ``None`` for OVO-Bench, :data:`~streamreason.evals.streamingbench.NO_RESPONSE`
    for a StreamingBench real-time question (``count.py`` raises on ``""``), and the silent
    polls up to ground truth + 4 s for a proactive one."""
    if benchmark == "ovo":
        responses: dict[tuple[Any, int | None], str | None] = {}
        ids = set()
        for row in rows:
            oid = row.meta["ovo_id"]
            ids.add(oid)
            probes = row.meta.get("probes")
            for p in preds[row.id]:
                responses[(oid, None if probes is None else probes[p.query])] = p.response
        entries = [e for e in ovo.load_annotations(anno[0]) if e.get("id") in ids]
        tasks = [t for t in ovo.BACKWARD_TASKS + ovo.REAL_TIME_TASKS + ovo.FORWARD_TASKS
                 if any(e["task"] == t for e in entries)]  # fmt: skip
        path = out_dir / "ovo" / name / f"{name}_{'_'.join(tasks)}_offline_1.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ovo.result_file(entries, responses), indent=4))
        return [path]
    if benchmark == "streamingbench":
        by_key = {(r.id.split("-")[1], r.meta["entry"], r.meta["question"]): r for r in rows}
        written = []
        for src in anno:
            data = streamingbench.load_questions(src)
            kind = "proactive" if streamingbench.is_proactive(data) else "real"
            for e, entry in enumerate(data):
                for q, question in enumerate(entry["questions"]):
                    row = by_key.get((kind, e, q))
                    if row is None:
                        continue
                    (p,) = preds[row.id]
                    if kind == "real":
                        question[name] = p.response or streamingbench.NO_RESPONSE
                    else:
                        polls = list(p.polls) or [(p.answer_time_s + streamingbench.PROACTIVE_GRACE_S, "")]
                        question[name] = streamingbench.proactive_record(polls, p.response_s)
            path = out_dir / f"{kind}_output_{name}.json"
            path.write_text(json.dumps(data, indent=4))
            written.append(path)
        return written
    return []


def score_official(benchmark: str, files: list[Path], name: str) -> tuple[dict, Any]:
    """Scores of written result files: ``(scores as JSON, printable)``."""
    if benchmark == "ovo":
        result, _ = ovo.score(ovo.load_results(files[0].parent))
        return {"tasks": result.tasks, "counts": result.counts, "categories": result.categories,
                "total": result.total}, result.report(name)  # fmt: skip
    real = next((json.loads(f.read_text()) for f in files if f.name.startswith("real_")), None)
    pro = next((json.loads(f.read_text()) for f in files if f.name.startswith("proactive_")), None)
    result = streamingbench.score(real, pro, name)
    scores = {"tasks": {k: {"total": n, "correct": c} for k, (n, c) in result.tasks.items()},
              "real_time_total": dict(zip(("total", "correct"), result.total, strict=True)),
              "proactive": None if result.proactive is None else
              dict(zip(("total", "time_correct", "answer_correct"), result.proactive, strict=True)),
              "unanswered": result.unanswered, "proactive_unanswered": result.proactive_unanswered}  # fmt: skip
    return scores, result.report(name)


def synthetic_scores(
    rows: list[StreamRow], preds: dict[str, list[Prediction]], name: str
) -> tuple[dict, Any]:
    """Per-task accuracy (ThinkStream's literal answers), answer rate and mean |timing error| of
    the synthetic benchmark, from the predictions."""
    from rich.table import Table

    per: dict[str, list[tuple[Prediction, float]]] = defaultdict(list)
    for row in rows:
        for p in preds[row.id]:
            per[row.task or "-"].append((p, item_score("synthetic", row, p) or 0.0))
    scores = {}
    table = Table(title=f"synthetic benchmark: {name}")
    for col in ("task", "questions", "accuracy %", "answered %", "|timing error| s"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task in sorted(per) + ["all"]:
        items = [x for v in per.values() for x in v] if task == "all" else per[task]
        errs = [abs(p.timing_error_s) for p, _ in items if p.timing_error_s is not None]
        n = max(len(items), 1)
        s = {"questions": len(items), "accuracy": 100 * sum(sc for _, sc in items) / n,
             "answered": 100 * sum(p.response is not None for p, _ in items) / n,
             "abs_timing_error_s": sum(errs) / len(errs) if errs else math.nan}  # fmt: skip
        scores[task] = s
        table.add_row(task, str(s["questions"]), f"{s['accuracy']:.2f}", f"{s['answered']:.2f}",
                      f"{s['abs_timing_error_s']:.2f}")  # fmt: skip
    return scores, table


def run_benchmark(benchmark: str, cfg, *, anno: list[str], video_root: str | None, out_dir: str | Path,
                  name: str, tasks: list[str] | None = None, limit: int | None = None, batch_rows: int = 8,
                  console=None, stack: tuple | None = None) -> dict:  # fmt: skip
    """Evaluate ``cfg.model`` on a benchmark; write predictions, official files and scores.

    Args:
        benchmark: one of :data:`BENCHMARKS`.
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

    console = console or Console(width=160)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, info = load_benchmark_rows(benchmark, anno, video_root)
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
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            for p in preds[row.id]:
                rec = {k: v for k, v in p.__dict__.items() if k != "polls"}
                rec["score"] = item_score(benchmark, by_id[row.id], p)
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if failures:
        (out_dir / "failures.txt").write_text("".join(f"{f.row_id}\t{f.error}\n" for f in failures))
    files = write_official(benchmark, anno, rows, preds, out_dir, name)
    if benchmark == "synthetic":
        scores, printable = synthetic_scores(rows, preds, name)
    else:
        scores, printable = score_official(benchmark, files, name)
    console.print(printable)
    console.print(f"{len(rows)} streams, {len(failures)} failed (video unreadable; unanswered: scored as wrong); "
                  f"predictions in {out_dir / 'predictions.jsonl'}")  # fmt: skip
    summary = {"benchmark": benchmark, "model": name, "scores": scores, "rows": len(rows),
               "failed": len(failures), "conversion": info, "files": [str(f) for f in files]}  # fmt: skip
    (out_dir / "scores.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
