"""Per-trajectory statistics and evaluation of a policy on held-out rows.

The same statistics feed the training metrics, the eval split and the command line's summary
table, so that "reward", "accuracy" and "|timing error|" mean one thing everywhere.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamreason.rewards.composite import CompositeReward, RewardResult
from streamreason.rewards.outcomes import query_outcomes
from streamreason.rl.learner import gather, shard, world
from streamreason.rollout.loop import RolloutConfig, Trajectory, run_rollouts
from streamreason.stack import build_policy, make_env_pool, make_reward


def trajectory_stats(traj: Trajectory, result: RewardResult | None) -> dict[str, float]:
    """Scalar statistics of one trajectory (NaN where undefined).

    Keys: ``reward`` and ``reward/<component>`` (when scored), ``accuracy`` (fraction of
    queries answered correctly), ``abs_timing_error_s`` (mean |answer chunk − evidence chunk|
    in seconds over answered queries), ``response_rate`` / ``format_ok`` (fractions of turns),
    ``think_tokens`` / ``response_tokens`` / ``context_tokens`` (means per turn).
    """
    nan = math.nan
    out: dict[str, float] = {}
    if result is not None and result.ok:
        out["reward"] = result.total
        out.update({f"reward/{k}": v for k, v in result.components.items()})
    outcomes = query_outcomes(traj.episode())
    correct = [float(o.correct) for o in outcomes if o.correct is not None]
    errors = [abs(o.timing_error_s) for o in outcomes if o.timing_error_s is not None]
    turns = traj.turns
    out.update(
        accuracy=float(np.mean(correct)) if correct else nan,
        abs_timing_error_s=float(np.mean(errors)) if errors else nan,
        response_rate=float(np.mean([t.parsed.action == "response" for t in turns])) if turns else nan,
        format_ok=float(np.mean([t.parsed.format_ok for t in turns])) if turns else nan,
        think_tokens=float(np.mean([t.think_tokens for t in turns])) if turns else nan,
        response_tokens=float(np.mean([len(t.response_ids) for t in turns])) if turns else nan,
        context_tokens=float(np.mean([t.memory.context_tokens for t in turns])) if turns else nan,
    )
    return out


def signed_timing_errors(traj: Trajectory) -> list[float]:
    """Signed timing errors (seconds; negative = before the evidence) of the answered queries."""
    return [o.timing_error_s for o in query_outcomes(traj.episode()) if o.timing_error_s is not None]


@dataclass
class EvalResult:
    """Evaluation of a policy on rows.

    Attributes:
        mean: statistic -> mean over rows (each row's samples averaged first).
        stderr: statistic -> standard error of that mean over rows.
        timing_errors_s: signed timing errors of every answered query, seconds.
        trajectories: number scored; rows_failed: rows dropped (bad video).
        per_row: row id -> each sample's statistics (what ``mean`` and ``stderr`` summarise).
    """

    mean: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    timing_errors_s: list[float] = field(default_factory=list)
    trajectories: int = 0
    rows_failed: int = 0
    per_row: dict[str, list[dict[str, float]]] = field(default_factory=dict, repr=False)

    @classmethod
    def merge(cls, parts: list[EvalResult]) -> EvalResult:
        """One result from the results of disjoint row sets (e.g. one per rank)."""
        out = cls()
        for p in parts:
            out.per_row.update(p.per_row)
            out.timing_errors_s.extend(p.timing_errors_s)
            out.trajectories += p.trajectories
            out.rows_failed += p.rows_failed
        out.mean, out.stderr = summarize(out.per_row)
        return out


def summarize(stats_by_row: dict[str, list[dict[str, float]]]) -> tuple[dict[str, float], dict[str, float]]:
    """Means and standard errors over rows of per-row averaged statistics."""
    per_row: dict[str, list[float]] = defaultdict(list)
    for samples in stats_by_row.values():
        for key in {k for s in samples for k in s}:
            vals = [s[key] for s in samples if key in s and not math.isnan(s[key])]
            if vals:
                per_row[key].append(float(np.mean(vals)))
    mean = {k: float(np.mean(v)) for k, v in per_row.items()}
    stderr = {
        k: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
        for k, v in per_row.items()
    }
    return mean, stderr


def evaluate(rows, *, pool, engine, encoder, cfg: RolloutConfig, reward: CompositeReward, samples: int,
             batch_rows: int = 16, progress: bool = False) -> EvalResult:  # fmt: skip
    """Roll out ``samples`` trajectories per row and score them.

    Under ``torchrun`` each rank rolls out its share of ``rows`` and every rank gets the
    statistics of all of them. Standard errors are over rows (samples of one row are
    correlated), so a difference of two policies' means larger than 2 standard errors is a real one.
    """
    from tqdm.auto import tqdm

    result = EvalResult()
    by_row = result.per_row
    rows = shard(rows)
    for i in tqdm(range(0, len(rows), batch_rows), desc="eval", unit="batch", disable=not progress):
        trajs, failures = run_rollouts(rows[i : i + batch_rows], pool=pool, engine=engine, encoder=encoder,
                                       cfg=cfg, group_size=samples)  # fmt: skip
        result.rows_failed += len(failures)
        for t in trajs:
            by_row.setdefault(t.row.id, []).append(trajectory_stats(t, reward(t.episode())))
            result.timing_errors_s.extend(signed_timing_errors(t))
        result.trajectories += len(trajs)
    return EvalResult.merge(gather([result]))


class Evaluator:
    """The evaluation job (``streamreason eval RECIPE``): the recipe's policy, engine, env pool and
    reward (:mod:`streamreason.stack`); no learner and no reference model.

    The model is loaded as the engine generates with it (``engine.dtype``; not at all with
    vLLM). Sampling seeds follow ``trainer.seed`` (+ rank), as in the trainers' evals.

    Args:
        cfg: the recipe.
    """

    def __init__(self, cfg):
        import torch

        rank, _ = world()
        self.cfg = cfg
        torch.manual_seed(cfg.trainer.seed + rank)
        self.policy = build_policy(cfg, seed=cfg.trainer.seed + rank)
        self.pool = make_env_pool(cfg)
        self.reward = make_reward(cfg)

    def run(self, rows, samples: int) -> EvalResult:
        """:func:`evaluate` on ``rows``, ``samples`` trajectories each; shuts the env pool down."""
        try:
            return evaluate(rows, pool=self.pool, engine=self.policy.engine, encoder=self.policy.encoder,
                            cfg=self.cfg.rollout, reward=self.reward, samples=samples,
                            progress=world()[0] == 0)  # fmt: skip
        finally:
            self.pool.shutdown()


def write_eval(path: Path, name: str, res: EvalResult) -> None:
    """Store an eval (means, standard errors, per-row rewards, signed timing errors) as JSON
    (what ``streamreason report --evals`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    per_row = {
        rid: float(np.mean([x["reward"] for x in xs if "reward" in x] or [math.nan]))
        for rid, xs in res.per_row.items()
    }
    path.write_text(json.dumps({"name": name, "mean": res.mean, "stderr": res.stderr, "row_reward": per_row,
                                "timing_errors_s": res.timing_errors_s, "trajectories": res.trajectories,
                                "rows_failed": res.rows_failed}, indent=1))  # fmt: skip
