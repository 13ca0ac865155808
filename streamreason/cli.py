"""The ``streamreason`` command line.

    model tiny OUT_DIR [--arch A]               the tiny default model (a Qwen-VL architecture, random)
    data synth OUT_DIR --n N                    synthetic streaming tasks: MP4s and their row JSONL
    data convert --from FMT SRC OUT             ThinkStream / VST / OVO-Bench / StreamingBench data as rows
    rollout --model DIR (--video V --query Q | --data F --out O)   a live transcript, or trajectories
    train RECIPE [--resume] [--dry-run]         GRPO (trainer.backend=local, or verl on GPUs)
    sft RECIPE                                  SFT warm-start on the gold watch-think-speak trajectories
    eval [RECIPE] [--model DIR] [--benchmark B --anno F...]   a model on data.eval or a benchmark
    eval score --benchmark B RESULTS_DIR        a benchmark's official score of its result files
    report RUN_DIR --evals A.json B.json        compare evals in a table and plot the run's reward curves
    sweep RECIPE --grid KEY=V1,V2 ...           hyperparameter sweep of ``train``, locally or as Ray Jobs
    sweep report SWEEP_DIR                      rebuild a sweep's sweep.csv, table and plots

Each is ``streamreason COMMAND`` (``--help`` gives its options). RECIPE is a YAML recipe
(``recipes/``; ``rollout --recipe FILE``); trailing ``key=value`` overrides apply wherever a
config does; bad input ends with a one-line ``error:`` naming the file, row or key.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from streamreason.errors import StreamReasonError
from streamreason.evals import BENCHMARKS, FORMATS
from streamreason.modeling import TINY_ARCHS


def _cmd_model_tiny(args) -> None:
    from streamreason.modeling import build_tiny_model

    out = build_tiny_model(args.out_dir, arch=args.arch, seed=args.seed)
    print(f"tiny {args.arch} model written to {out}")


def _cmd_data_synth(args) -> None:
    from streamreason.envs.synthetic import synthesize

    out = synthesize(
        args.out_dir, n=args.n, seed=args.seed, min_seconds=args.min_seconds, max_seconds=args.max_seconds
    )
    print(f"{args.n} streams written to {out}")


def _cmd_data_convert(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from streamreason.envs.convert import convert

    # a missing or unreadable source is a RowError naming the file, reported by main()
    report = convert(args.fmt, args.src, args.out, args.video_root, skip_missing=args.skip_missing)
    table = Table(title=f"{args.src} ({args.fmt}): {report.entries} entries -> {len(report.rows)} streams")
    for col in ("task", "streams", "queries"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, (n_rows, n_queries) in report.per_task.items():
        table.add_row(task, str(n_rows), str(n_queries))
    console = Console()
    console.print(table)
    out = Path(args.out)
    if report.errors:
        console.print(f"[yellow]{len(report.errors)} entries did not convert[/]: listed in {out}.errors.txt "
                      f"(first: {report.errors[0]})")  # fmt: skip
    if report.missing_videos:
        kept = "left out" if args.skip_missing else "kept"
        console.print(f"[yellow]{len(report.missing_videos)} streams name a missing video[/] ({kept}): "
                      f"listed in {out}.missing.txt (video root: {args.video_root or Path(args.src).parent})")  # fmt: skip
    console.print(f"rows written to {out}")


def _print_turn(console, traj, turn) -> None:
    """One transcript line: window, thought, and response / silence (raw text if unparsable)."""
    from rich.markup import escape

    start, end = turn.window_s
    p = turn.parsed
    line = f"[cyan]\\[{start:7.1f}s-{end:7.1f}s][/] "
    if p.think is not None:
        line += f"[dim]think:[/] {escape(p.think[:80])}  "
    if p.action == "response":
        line += f"[bold green]response:[/] {escape(p.response or '')}"
    elif p.action == "invalid":
        line += f"[red]unparsed:[/] {escape(repr(turn.text[:60]))}"
    else:
        line += f"[dim]<{p.action}>[/]"
    if not p.format_ok:
        line += f"  [yellow](format: {escape(p.errors[0])})[/]"
    console.print(line, overflow="ellipsis", no_wrap=True)


def _cmd_rollout(args) -> None:
    from rich.console import Console

    from streamreason.config import load_config
    from streamreason.rollout.loop import run_rollouts
    from streamreason.stack import build_policy, make_env_pool, make_reward
    from streamreason.types import Query, StreamRow, read_rows

    overrides = [f"model={args.model}", *args.overrides] if args.model else list(args.overrides)
    if args.video:  # one stream, one trajectory, in-process env unless overridden
        overrides = ["rollout.group_size=1", "env_pool.in_process=true", *overrides]
    cfg = load_config(args.recipe, overrides)
    console = Console()
    reward = make_reward(cfg)
    if args.video:
        from streamreason.envs.video import probe_video

        probe_video(args.video)  # a missing or corrupt video fails here, in one line
        if not args.query:
            raise StreamReasonError("--video needs --query")
        answer_at = args.answer_at if args.answer_at is not None else args.at
        q = Query(args.query, args.at, args.answer, answer_at if args.answer is not None else None)
        rows, bad = [StreamRow(id=Path(args.video).name, video_path=args.video, queries=[q])], []
    else:
        if not args.data or not args.out:
            raise StreamReasonError(
                "rollout needs either --video PATH --query TEXT, or --data FILE.jsonl --out OUT.jsonl"
            )
        if not Path(args.data).is_file():
            raise StreamReasonError(f"data file {args.data!r} does not exist")
        rows, bad = read_rows(args.data)
        for e in bad:
            console.print(f"[yellow]skipped[/] {e}")
    policy = build_policy(cfg)
    encoder, engine = policy.encoder, policy.engine
    results = []
    with make_env_pool(cfg) as pool:
        if args.video:
            trajs, failures = run_rollouts(
                rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg.rollout,
                on_turn=lambda t, r: _print_turn(console, t, r),
            )  # fmt: skip
            results = [(t, reward(t.episode()) if args.answer is not None else None) for t in trajs]
        else:
            from tqdm.auto import tqdm

            failures = []
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w") as f, tqdm(total=len(rows), desc="rows", unit="row") as bar:
                for i in range(0, len(rows), args.batch_rows):
                    batch = rows[i : i + args.batch_rows]
                    trajs, fails = run_rollouts(
                        batch, pool=pool, engine=engine, encoder=encoder, cfg=cfg.rollout
                    )
                    for fail in fails:
                        console.print(f"[yellow]skipped[/] {fail.error}")
                    failures.extend(fails)
                    for t in trajs:
                        res = reward(t.episode())
                        results.append((t, res))
                        f.write(json.dumps(trajectory_record(t, res)) + "\n")
                    bar.update(len(batch))
    if not results and failures:
        raise failures[0].error
    _print_summary(console, results, skipped=len(bad) + len(failures))
    if args.out:
        console.print(f"trajectories written to {args.out}")


def trajectory_record(traj, result) -> dict:
    """A trajectory as one JSON-serialisable record (text level, no tensors)."""
    from streamreason.rewards.outcomes import query_outcomes

    return {
        "row_id": traj.row.id,
        "group_index": traj.group_index,
        "video_path": traj.row.video_path,
        "chunk_seconds": traj.chunk_seconds,
        "truncated": traj.truncated,
        "reward": None if not result.ok else result.total,
        "components": result.components,
        "reward_error": result.error,
        "queries": [
            {
                "text": o.query.text,
                "time_s": o.query.time_s,
                "answer": o.query.answer,
                "predicted": o.answer,
                "correct": o.correct,
                "timing_error_s": o.timing_error_s,
            }
            for o in query_outcomes(traj.episode())
        ],  # fmt: skip
        "turns": [
            {
                "chunk": t.chunk_index,
                "window_s": list(t.window_s),
                "text": t.text,
                "action": t.parsed.action,
                "think": t.parsed.think,
                "response": t.parsed.response,
                "format_ok": t.parsed.format_ok,
                "think_tokens": t.think_tokens,
                "response_tokens": len(t.response_ids),
                "context_tokens": t.memory.context_tokens,
                "visual_tokens": t.memory.visual_tokens,
                "shared_prefix_tokens": t.memory.shared_prefix_tokens,
            }
            for t in traj.turns
        ],  # fmt: skip
    }


def _print_summary(console, results, skipped: int) -> None:
    """Summary table: mean and std over trajectories of the statistics that training and eval
    report (``rl/evaluate.py``). ``results`` pairs trajectories with their RewardResult, or None
    when there is no ground truth to score."""
    import numpy as np
    from rich.table import Table

    from streamreason.rl.evaluate import trajectory_stats

    stats = [trajectory_stats(t, r) for t, r in results]
    failed = sum(1 for _, r in results if r is not None and not r.ok)
    table = Table(title=f"{len(results)} trajectories, {skipped} rows skipped, {failed} reward failures")
    for col in ("metric", "mean", "std"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in dict.fromkeys(k for s in stats for k in s):
        values = [s[key] for s in stats if key in s and not math.isnan(s[key])]
        if values:
            table.add_row(key, f"{np.mean(values):.3f}", f"{np.std(values):.3f}")
    console.print(table)


def _cmd_train(args) -> None:
    from streamreason.config import load_config
    from streamreason.rl.trainer import GRPOTrainer

    cfg = load_config(args.recipe, args.overrides)
    if cfg.trainer.backend == "verl":
        from streamreason.rl.verl_backend import train_verl

        run_dir = train_verl(cfg, dry_run=args.dry_run, resume=args.resume)
        print(f"verl run directory: {run_dir}" + (" (dry run: nothing launched)" if args.dry_run else ""))
        return
    if args.dry_run:
        raise StreamReasonError("--dry-run applies to trainer.backend=verl")
    final = GRPOTrainer(cfg).train(resume=args.resume)
    print(
        "GRPO finished; eval: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(final.items()) if "/" not in k)
    )


def _cmd_sweep(args) -> None:
    from streamreason.config import load_config
    from streamreason.errors import ConfigError
    from streamreason.rl.sweep import (
        LocalLauncher,
        RayJobLauncher,
        Sweep,
        check_trials,
        run_sweep,
        write_report,
    )

    if args.launcher == "ray" and not args.address:
        raise ConfigError(
            "--launcher ray needs --address (the cluster's dashboard URL, e.g. http://head:8265)"
        )
    spec = {"recipe": str(Path(args.recipe).resolve()), "overrides": list(args.overrides), "grid": list(args.grid),
            "random": args.random, "seed": args.seed, "metric": args.metric}  # fmt: skip
    out = args.out or f"runs/sweep-{Path(args.recipe).stem}"
    sweep = Sweep(out, spec)
    check_trials(sweep, load=load_config)
    sweep.save()
    if args.launcher == "local":
        launcher = LocalLauncher(args.parallel or 1)
    else:
        launcher = RayJobLauncher(
            args.address, args.parallel or len(sweep.trials), args.trial_cpus, args.trial_gpus
        )
    run_sweep(sweep, launcher, args.python)
    records = write_report(sweep)
    failed = [r["trial"] for r in records if r["state"] != "finished"]
    print(f"sweep folder: {sweep.dir} (sweep.csv, sweep_curves.png, sweep_params.png)")
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)}; rerun the same command to retry them")


def _cmd_sweep_report(args) -> None:
    from streamreason.rl.sweep import Sweep, write_report

    sweep = Sweep.open(args.sweep_dir)
    write_report(sweep)
    print(f"written: {sweep.dir / 'sweep.csv'}, sweep_curves.png, sweep_params.png")


def _cmd_sft(args) -> None:
    from streamreason.config import load_config
    from streamreason.rl.sft import SFTTrainer

    cfg = load_config(args.recipe, args.overrides)
    trainer = SFTTrainer(cfg)
    metrics = trainer.train()
    if trainer.rank == 0:
        print(
            f"SFT finished (loss {metrics.get('loss', float('nan')):.3f}); model in {cfg.trainer.run_dir}/final"
        )


def _cmd_eval(args) -> None:
    from rich.console import Console

    from streamreason.config import load_config
    from streamreason.rl.evaluate import Evaluator, write_eval
    from streamreason.rl.report import summary_table
    from streamreason.stack import load_rows

    overrides = [f"model={args.model}", *args.overrides] if args.model else list(args.overrides)
    if args.benchmark:
        from streamreason.evals.harness import run_benchmark

        # greedy decoding unless the command line says otherwise
        cfg = load_config(args.recipe, ["rollout.sampling.temperature=0", *overrides])
        name = args.name or Path(cfg.model).name
        out = args.out or f"eval_{args.benchmark}_{name}"
        run_benchmark(args.benchmark, cfg, anno=args.anno or [], video_root=args.video_root, out_dir=out,
                      name=name, tasks=args.tasks, limit=args.limit, batch_rows=args.batch_rows)  # fmt: skip
        return
    if not args.recipe:
        raise StreamReasonError("eval needs a RECIPE (scores data.eval) or --benchmark")
    cfg = load_config(args.recipe, overrides)
    if not cfg.data.eval:
        raise StreamReasonError("eval RECIPE scores data.eval, which is null: pass data.eval=FILE.jsonl")
    rows, _ = load_rows(cfg.data.eval, cfg.data.eval_rows)
    res = Evaluator(cfg).run(rows, cfg.trainer.eval_samples)
    name = args.name or Path(cfg.model).name
    if args.out:
        write_eval(Path(args.out), name, res)
    Console(width=150).print(
        summary_table([_eval_row(name, res.mean, res.stderr)], f"eval on {cfg.data.eval}")
    )


def _cmd_eval_score(args) -> None:
    from rich.console import Console

    from streamreason.evals.registry import get_benchmark

    _, printable = get_benchmark(args.benchmark).score_results_dir(args.results_dir, args.model_name)
    Console(width=160).print(printable, markup=False)  # a model name is text, not rich markup


def _eval_row(name: str, mean: dict, stderr: dict) -> dict:
    """A table row: the reward, each reward component, accuracy and mean |timing error|."""
    keys = ["reward", *sorted(k for k in mean if k.startswith("reward/")), "accuracy", "abs_timing_error_s"]
    names = {"abs_timing_error_s": "|timing error| s"}
    row = {"model": name}
    for key in keys:
        if key in mean:
            row[names.get(key, key.removeprefix("reward/"))] = (mean[key], stderr.get(key, float("nan")))
    return row


def paired_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int]:
    """Mean of ``b[row] - a[row]`` over the rows both scored, its standard error, and the count.

    Both policies are evaluated on the same rows, so the per-row difference removes the rows'
    own difficulty from the noise (a paired comparison).
    """
    import numpy as np

    d = np.array([b[k] - a[k] for k in a.keys() & b.keys() if not (math.isnan(a[k]) or math.isnan(b[k]))])
    if len(d) < 2:
        return float("nan"), float("nan"), len(d)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def _cmd_report(args) -> None:
    """Compare evals (JSON from ``eval --out``) in a table and plot a run's curves."""
    from rich.console import Console

    from streamreason.rl.report import summary_table, write_report

    evals = [json.loads(Path(p).read_text()) for p in args.evals]
    run_dir = Path(args.run_dir)
    (run_dir / "eval_timing_errors.json").write_text(
        json.dumps({e["name"]: e["timing_errors_s"] for e in evals})
    )
    png = write_report(run_dir, args.png)
    console = Console(width=150)
    console.print(
        summary_table(
            [_eval_row(e["name"], e["mean"], e["stderr"]) for e in evals], "eval (mean ± stderr over rows)"
        )
    )
    if len(evals) >= 2:
        a, b = evals[-2], evals[-1]
        diff, se, n = paired_difference(a["row_reward"], b["row_reward"])
        console.print(f"{b['name']} - {a['name']}: mean reward {diff:+.3f} over {n} eval rows, paired standard "
                      f"error {se:.3f} ({diff / se:+.1f} standard errors)")  # fmt: skip
    console.print(f"report written to {png}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamreason", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="build models").add_subparsers(dest="what", required=True)
    tiny = model.add_parser("tiny", help="write the tiny default Qwen2.5-VL-architecture model")
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--arch", choices=TINY_ARCHS, default="qwen2_5_vl", help="Qwen-VL family (default qwen2_5_vl)"
    )
    tiny.set_defaults(func=_cmd_model_tiny)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="what", required=True)
    synth = data.add_parser("synth", help="synthetic streaming tasks: MP4s + ThinkStream-format JSONL")
    synth.add_argument("out_dir")
    synth.add_argument("--n", type=int, required=True, help="number of streams")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--min-seconds", type=int, default=8, help="shortest video, seconds")
    synth.add_argument("--max-seconds", type=int, default=16, help="longest video, seconds")
    synth.set_defaults(func=_cmd_data_synth)
    conv = data.add_parser(
        "convert", help="convert ThinkStream / VST / OVO-Bench / StreamingBench data into streaming rows"
    )
    conv.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="the source format")
    conv.add_argument("src", help="the source file (JSONL, parquet or the benchmark's JSON)")
    conv.add_argument("out", help="the row JSONL to write")
    conv.add_argument("--video-root", help="folder the source's video paths are relative to (default: SRC's)")
    conv.add_argument("--skip-missing", action="store_true", help="leave out rows whose video is missing")
    conv.set_defaults(func=_cmd_data_convert)

    ro = sub.add_parser("rollout", help="watch-think-speak over a video (live transcript) or a dataset")
    ro.add_argument("--model", help="checkpoint folder (overrides the recipe's model)")
    ro.add_argument("--recipe", help="YAML recipe")
    ro.add_argument("--video", help="one video file: prints a live transcript")
    ro.add_argument("--query", help="the user's query (with --video)")
    ro.add_argument("--at", type=float, default=0.0, help="when the query is asked, seconds (default 0)")
    ro.add_argument("--answer", help="ground-truth answer: scores the trajectory (with --video)")
    ro.add_argument("--answer-at", type=float, help="seconds from which --answer is correct (default --at)")
    ro.add_argument("--data", help="JSONL of rows (ThinkStream format)")
    ro.add_argument("--out", help="JSONL of trajectories to write (with --data)")
    ro.add_argument("--batch-rows", type=int, default=8, help="rows rolled out together (with --data)")
    ro.add_argument("overrides", nargs="*", help="config overrides, key=value")
    ro.set_defaults(func=_cmd_rollout)

    tr = sub.add_parser("train", help="GRPO training (trainer.backend=local, or verl on GPUs)")
    tr.add_argument("recipe")
    tr.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in trainer.run_dir"
    )
    tr.add_argument(
        "--dry-run", action="store_true", help="trainer.backend=verl: write the run directory, launch nothing"
    )
    tr.add_argument("overrides", nargs="*", help="config overrides, key=value")
    tr.set_defaults(func=_cmd_train)

    sw = sub.add_parser(
        "sweep", help="hyperparameter sweep of `train` over a grid, locally or as Ray Jobs",
        epilog="sweep report DIR: rebuild a sweep's sweep.csv, table and plots",
    )  # fmt: skip
    sw.add_argument("recipe")
    sw.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                    help="values of one config key (repeat per key); with --random also "
                         "loguniform(a,b), uniform(a,b), randint(a,b)")  # fmt: skip
    sw.add_argument("--random", type=int, help="draw N trials instead of the full grid")
    sw.add_argument("--seed", type=int, default=0, help="seed of the --random draws")
    sw.add_argument("--launcher", choices=("local", "ray"), default="local")
    sw.add_argument("--parallel", type=int, help="trials at once (default: local 1, ray all)")
    sw.add_argument(
        "--address", help="ray: the cluster's dashboard URL (Ray Jobs API), e.g. http://head:8265"
    )
    sw.add_argument("--trial-cpus", type=float, default=1.0, help="ray: CPUs reserved per trial")
    sw.add_argument("--trial-gpus", type=float, default=0.0, help="ray: GPUs reserved per trial")
    sw.add_argument("--out", help="the sweep folder (default runs/sweep-<recipe name>)")
    sw.add_argument(
        "--metric", default="eval/reward", help="what the table and plots rank by (its final value)"
    )
    sw.add_argument("--python", default=sys.executable, help="the trials' Python (default: this one)")
    sw.add_argument("overrides", nargs="*", help="config overrides for every trial, key=value")
    sw.set_defaults(func=_cmd_sweep)

    sf = sub.add_parser("sft", help="SFT warm-start on gold watch-think-speak trajectories")
    sf.add_argument("recipe")
    sf.add_argument("overrides", nargs="*", help="config overrides, key=value")
    sf.set_defaults(func=_cmd_sft)

    ev = sub.add_parser(
        "eval", help="evaluate a model on data.eval, or on a streaming benchmark (--benchmark)",
        epilog="eval score --benchmark NAME RESULTS_DIR: score a benchmark's own result files",
    )  # fmt: skip
    ev.add_argument("recipe", nargs="?", help="YAML recipe (required without --benchmark)")
    ev.add_argument("--model", help="checkpoint folder (overrides the recipe's model)")
    ev.add_argument("--name", help="name of this eval in tables (default: the model folder)")
    ev.add_argument("--out", help="write the eval as JSON; with --benchmark, the output folder")
    ev.add_argument("--benchmark", choices=BENCHMARKS, help="run a streaming benchmark with its protocol")
    ev.add_argument("--anno", nargs="+", help="the benchmark's annotation file(s) (synthetic: row JSONL)")
    ev.add_argument("--video-root", help="folder the annotations' video paths are relative to")
    ev.add_argument("--tasks", nargs="+", help="only these tasks (e.g. EPM REC)")
    ev.add_argument("--limit", type=int, help="only the first N streams")
    ev.add_argument("--batch-rows", type=int, default=8, help="streams rolled out together")
    ev.add_argument("overrides", nargs="*", help="config overrides, key=value")
    ev.set_defaults(func=_cmd_eval)

    rp = sub.add_parser("report", help="compare eval JSONs and plot a run's reward curves")
    rp.add_argument("run_dir", help="the GRPO run directory (metrics.jsonl)")
    rp.add_argument("--evals", nargs="+", required=True, help="eval JSON files, in table order")
    rp.add_argument("--png", help="where to write the figure (default RUN_DIR/report.png)")
    rp.set_defaults(func=_cmd_report)
    return p


def score_parser() -> argparse.ArgumentParser:
    """``streamreason eval score``: the official scorers on result files."""
    p = argparse.ArgumentParser(prog="streamreason eval score",
                                description="score a streaming benchmark's result files with its official rules")  # fmt: skip
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument(
        "results_dir", help="OVO-Bench: results/<model>/; StreamingBench: the *_output_<model>.json folder"
    )
    p.add_argument("--model-name", help="the model's name (default: the folder's / the output files' key)")
    p.set_defaults(func=_cmd_eval_score)
    return p


def sweep_report_parser() -> argparse.ArgumentParser:
    """``streamreason sweep report``: rebuild a sweep's CSV, table and plots."""
    p = argparse.ArgumentParser(prog="streamreason sweep report", description="rebuild a sweep's report")
    p.add_argument("sweep_dir", help="the sweep folder (holds sweep.json)")
    p.set_defaults(func=_cmd_sweep_report)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line; ``key=value`` overrides may stand before or after options."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["eval", "score"]:
        return score_parser().parse_args(argv[2:])
    if argv[:2] == ["sweep", "report"]:
        return sweep_report_parser().parse_args(argv[2:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # argparse leaves overrides after options here
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        args.func(args)
    except StreamReasonError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
