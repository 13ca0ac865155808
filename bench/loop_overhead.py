"""Loop overhead: what the rollout loop itself costs per lockstep step (decode the chunk, encode
it, build each trajectory's context and request), with an engine that answers instantly.

Runs on the CPU at the reference model's pixel budget (its processor and tokenizer; no weights
are needed), so it measures the host-side work every engine pays on top of generation. The
table lists the functions that take the most time (cProfile, cumulative).

    python bench/loop_overhead.py [--seconds 40 --group 8] [--tiny]
"""

from __future__ import annotations

import cProfile

from common import (
    InstantEngine,
    Timer,
    parser,
    reference_encoder,
    report,
    rollout_config,
    setup,
    top_functions,
    videos,
)

from streamreason.envs.pool import EnvPool
from streamreason.rollout.loop import run_rollouts


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=40, help="video length, seconds")
    p.add_argument("--group", type=int, default=8, help="G, trajectories per stream")
    p.add_argument("--top", type=int, default=8, help="functions to list")
    args = p.parse_args(argv)
    s = setup(args, need_gpu=False)  # the reference processor runs on the CPU
    if s.tiny:
        args.seconds, args.group = 6, 2
    rows = videos(s, 1, args.seconds)
    encoder = reference_encoder(s)
    cfg = rollout_config(s, window=20, block=1, group=args.group)
    profile = cProfile.Profile()
    with EnvPool(cfg.env, in_process=True) as pool, Timer() as t:
        profile.enable()
        trajs, failures = run_rollouts(
            rows, pool=pool, engine=InstantEngine(encoder), encoder=encoder, cfg=cfg
        )
        profile.disable()
    assert not failures, failures
    steps = len(trajs[0].turns)
    top = top_functions(profile, args.top + 1, ("streamreason", "/rollout/", "/envs/"))
    table = [["whole loop", 1000 * t.seconds / steps, 100.0]]
    table += [[name, 1000 * sec / steps, 100 * sec / t.seconds] for sec, name in top[1 : args.top + 1]]
    return report(
        f"Rollout loop overhead per lockstep step ({args.seconds} s stream, G={args.group}, W=20, instant engine)",
        ["function", "ms per step", "% of loop"], table, s,
        {"seconds": args.seconds, "group": args.group, "size": s.size, "pixels": [cfg.env.min_pixels, cfg.env.max_pixels]},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
