"""Prefix reuse: the share of each turn's prompt tokens that vLLM serves from its prefix cache,
for eviction blocks B = 1, 4, 8 (memory W=20, group 8).

Between evictions a turn's prompt extends the previous one, so only the new chunk and the
last reply need prefill; an eviction rewrites the context after the evicted video and the
cache serves only what precedes it. The table gives vLLM's measured share (its
``num_cached_tokens``) and the share that the memory keeps identical to the previous turn's
prompt (``MemoryStats.shared_prefix_tokens``, the most a prefix cache can serve).

    python bench/prefix_reuse.py [--blocks 1 4 8 --seconds 120 --group 8] [--tiny]
"""

from __future__ import annotations

import numpy as np
from common import Timer, parser, report, rollout_config, setup, stack, videos

from streamreason.envs.pool import EnvPool
from streamreason.rollout.loop import run_rollouts


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 4, 8], help="eviction blocks B")
    p.add_argument("--seconds", type=int, default=120, help="video length, seconds")
    p.add_argument("--group", type=int, default=8, help="G, trajectories per stream")
    args = p.parse_args(argv)
    s = setup(args)
    window = 20
    if s.tiny:
        args.seconds, args.group, window = 8, 2, 3
    rows = videos(s, 1, args.seconds)
    configs = {b: rollout_config(s, window=window, block=b, group=args.group) for b in args.blocks}
    limit = max(c.memory.max_videos(args.seconds) for c in configs.values())
    encoder, engine = stack(s, "transformers" if s.tiny else "vllm", max_videos=limit)
    table = []
    for b, cfg in configs.items():
        engine.reset_prefix_cache()  # no hits left over from the previous B
        with EnvPool(cfg.env, num_workers=2, in_process=s.tiny) as pool, Timer() as t:
            trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg)
        assert not failures, failures
        turns = [x for tr in trajs for x in tr.turns]
        prompt = np.array([len(x.prompt_ids) for x in turns], dtype=float)
        shared = np.array([x.memory.shared_prefix_tokens for x in turns], dtype=float)
        measured = engine.reports_prefix_cache
        cached = np.array([x.cached_prompt_tokens or 0 for x in turns], dtype=float)
        nan = float("nan")
        table.append([b, len(turns), float(prompt.mean()),
                      100 * cached.sum() / prompt.sum() if measured else nan,
                      100 * float(np.mean(cached / prompt >= 0.8)) if measured else nan,
                      100 * shared.sum() / prompt.sum(), t.seconds])  # fmt: skip
    return report(
        f"Prefix reuse per turn: W={window}, {args.seconds} s stream, G={args.group}",
        ["B", "turns", "mean prompt tokens", "vLLM cached % of prompt tokens", "turns >= 80% cached %",
         "shareable prefix % (memory)", "wall s"], table, s,
        {"window": window, "blocks": args.blocks, "seconds": args.seconds, "group": args.group, "size": s.size},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
