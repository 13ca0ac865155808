"""Rollout throughput: the vLLM engine with memory W=20 (eviction blocks B=1 and B=8, rewriting
the context, or B=1 masking it: ``memory.eviction=mask``), the vLLM engine keeping all video, and
the transformers engine with W=20, on the same streams in one run.

Reports video-seconds watched per second (over all G trajectories), generated tokens/s,
turns/s, the mean context and the share of prompt tokens vLLM served from its prefix cache,
each configuration's ratio to the transformers engine, and where the wall time went: the
model call (vLLM's ``LLM.generate``, HF ``generate``), the engine's preparation around it
(prompt and frame conversion, checks) and the loop (env, memory, chat encoding).

With ``--profile N`` each configuration also runs under cProfile (slower; a diagnosis, not a
measurement) and the N functions with the most cumulative time are listed under the table.

    python bench/rollout_throughput.py [--rows 1 --seconds 60 --group 8 --configs ...] [--tiny]
"""

from __future__ import annotations

import contextlib
import cProfile
import gc

import numpy as np
import torch
from common import TimedCalls, Timer, parser, report, rollout_config, setup, stack, top_functions, videos

from streamreason.envs.pool import EnvPool
from streamreason.rollout.loop import run_rollouts
from streamreason.rollout.vllm_engine import VLLMEngine

CONFIGS = [  # (name, engine, memory)
    ("transformers, W=20", "transformers", dict(window=20)),
    ("vLLM, W=20", "vllm", dict(window=20)),
    ("vLLM, all video", "vllm", dict(keep_all_video=True)),
    ("vLLM, W=20 B=8", "vllm", dict(window=20, block=8)),
    ("vLLM, W=20 mask", "vllm", dict(window=20, eviction="mask")),  # ThinkStream's RCSM, span-masked
    ("transformers, W=20 mask", "transformers", dict(window=20, eviction="mask")),
]


def measure(s, rows, engine_name, memory: dict, group: int, stack_cache: dict, profile: int = 0) -> dict:
    cfg = rollout_config(s, group=group, **memory)
    n_chunks = max(int(np.ceil(r.meta["duration_s"])) for r in rows)
    key = (engine_name, cfg.memory.eviction)  # the mask runs vLLM's FlexAttention with the span plugin
    if key not in stack_cache:
        for _, old in stack_cache.values():  # one engine on the GPU at a time
            old.close()
        stack_cache.clear()
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        stack_cache[key] = stack(s, engine_name, max_videos=n_chunks + 1, memory=cfg.memory)
    encoder, engine = stack_cache[key]
    engine.reset_prefix_cache()  # no hits left over from the previous configuration
    # the model call: vLLM's LLM.generate, or HF generate on the transformers engine's module
    inner = (engine.llm, "generate") if isinstance(engine, VLLMEngine) else (engine.model, "generate")
    prof = cProfile.Profile() if profile else None
    with EnvPool(cfg.env, num_workers=2, in_process=s.tiny) as pool, TimedCalls(engine, "generate") as gen, \
            TimedCalls(*inner) as model, Timer() as t, prof or contextlib.nullcontext():  # fmt: skip
        trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg)
    assert not failures, failures
    top = top_functions(prof, profile) if prof else []
    turns = [x for tr in trajs for x in tr.turns]
    cached = [x.cached_prompt_tokens / len(x.prompt_ids) for x in turns if x.cached_prompt_tokens is not None]
    return {
        "seconds": t.seconds,
        "video_s_per_s": sum(tr.chunk_seconds * len(tr.turns) for tr in trajs) / t.seconds,
        "tokens_per_s": sum(len(x.response_ids) for x in turns) / t.seconds,
        "turns_per_s": len(turns) / t.seconds,
        "context": float(np.mean([len(x.prompt_ids) for x in turns])),
        "cached": float(np.mean(cached)) if cached else float("nan"),
        # where the wall time went: the model call itself (vLLM's LLM.generate / HF generate),
        # the engine's own preparation around it, and the loop (env, memory, chat encoding)
        "model_pct": 100 * model.seconds / t.seconds,
        "engine_prep_pct": 100 * (gen.seconds - model.seconds) / t.seconds,
        "loop_pct": 100 * (t.seconds - gen.seconds) / t.seconds,
        "profile": [f"{sec:8.2f} s  {name}" for sec, name in top],
    }


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1, help="streams (each rolled out G times)")
    p.add_argument("--seconds", type=int, default=60, help="video length, seconds")
    p.add_argument("--group", type=int, default=8, help="G, trajectories per stream")
    p.add_argument("--configs", nargs="+", choices=[c[0] for c in CONFIGS], default=[c[0] for c in CONFIGS[:3]],
                   help="configurations to run (ratios are to the first one run; default the first three)")  # fmt: skip
    p.add_argument("--profile", type=int, default=0, metavar="N", help="list the N costliest functions")
    args = p.parse_args(argv)
    s = setup(args)
    configs = [
        c for c in CONFIGS if c[0] in args.configs and not (s.tiny and c[1] == "vllm")
    ]  # vLLM needs CUDA
    if s.tiny:
        args.rows, args.seconds, args.group = 1, 4, 2
    rows = videos(s, args.rows, args.seconds)
    cache: dict = {}
    results = {
        name: measure(s, rows, eng, mem, args.group, cache, args.profile) for name, eng, mem in configs
    }
    base = results[configs[0][0]]
    table = [[name, r["seconds"], r["video_s_per_s"], r["tokens_per_s"], r["turns_per_s"], r["context"],
              100 * r["cached"], r["video_s_per_s"] / base["video_s_per_s"], r["model_pct"], r["engine_prep_pct"],
              r["loop_pct"]] for name, r in results.items()]  # fmt: skip
    return report(
        f"Rollout throughput: {args.rows} stream(s) x {args.seconds} s x G={args.group}",
        ["engine, memory", "wall s", "video-s/s", "gen tokens/s", "turns/s", "mean context", "prefix-cached %",
         f"x {configs[0][0]}", "model call %", "engine prep %", "loop %"], table, s,
        {"rows": args.rows, "seconds": args.seconds, "group": args.group, "size": s.size, "eager": s.eager,
         "gpu_memory_utilization": s.gpu_memory_utilization},
        args.out, [f"profile, {name}:\n" + "\n".join(r["profile"]) for name, r in results.items() if r["profile"]],
    )  # fmt: skip


if __name__ == "__main__":
    main()
