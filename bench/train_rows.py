"""Training rows per trajectory by memory: ``rewrite`` (B=1, B=8) against ``mask`` (B=1).

A ThinkStream-size stream (120 one-second chunks, the reference model's processor and pixel
budget; no weights) rolled out with an engine that answers every turn with a fixed 30-token
silent turn, then packed into training rows as the trainers pack them
(:func:`~streamreason.rl.rows.build_rows`). Reported per trajectory: rows, training tokens (the
sum of the rows' lengths, what the learner's forward passes cost), the trajectory's own length
(its last context plus its last reply: every token it ever saw once) and their ratio. Runs on
the CPU: the counts do not depend on the device.

    python bench/train_rows.py [--seconds 120 --window 20] [--tiny]
"""

from __future__ import annotations

import numpy as np
from common import InstantEngine, Timer, parser, reference_encoder, report, rollout_config, setup, videos

from streamreason.envs.pool import EnvPool
from streamreason.rl.rows import build_rows
from streamreason.rollout.loop import run_rollouts

MEMORIES = [
    ("rewrite, B=1", dict(block=1)),
    ("rewrite, B=8", dict(block=8)),
    ("mask, B=1", dict(block=1, eviction="mask")),
]


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=120, help="video length, seconds (one chunk a second)")
    p.add_argument("--window", type=int, default=20, help="W, chunks whose video stays visible")
    args = p.parse_args(argv)
    s = setup(args, need_gpu=False)  # the reference processor runs on the CPU
    if s.tiny:
        args.seconds, args.window = 8, 3
    rows = videos(s, 1, args.seconds)
    encoder = reference_encoder(s)
    table = []
    for name, memory in MEMORIES:
        cfg = rollout_config(s, window=args.window, group=1, **memory)
        with EnvPool(cfg.env, in_process=True) as pool, Timer() as t:
            (traj,), failures = run_rollouts(
                rows, pool=pool, engine=InstantEngine(encoder), encoder=encoder, cfg=cfg
            )
        assert not failures, failures
        train = build_rows([traj])
        length = len(traj.turns[-1].prompt_ids) + len(traj.turns[-1].response_ids)
        tokens = sum(len(r) for r in train)
        table.append([name, len(traj.turns), len(train), tokens, length, tokens / length,
                      float(np.mean([len(x.prompt_ids) for x in traj.turns])), t.seconds])  # fmt: skip
    return report(
        f"Training rows per trajectory: {args.seconds} chunks, W={args.window}, 30-token turns",
        ["memory", "turns", "rows", "training tokens", "trajectory tokens", "x trajectory", "mean context",
         "rollout s (instant engine)"], table, s,
        {"seconds": args.seconds, "window": args.window, "size": s.size}, args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
