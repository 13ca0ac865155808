"""Real-time latency: per-chunk latency (p50/p95) and memory against video length, memory W=20,
for one stream and for several concurrent streams.

One long stream is watched chunk by chunk with the vLLM engine; a chunk's latency is the wall
time from the previous chunk's reply to this chunk's reply (decode the chunk, build the
context, generate the turn), i.e. what a live viewer waits after each second of video. At each
mark (e.g. 1, 5, 20, 60 minutes; printed as it is reached) the table gives the latency percentiles over the preceding
``--window`` chunks, the device's GPU memory in use, the context length and its KV cache size.
Text memory is capped (``--text-sink`` + ``--text-recent`` tokens, StreamingVLM's rule), so
context and memory stay flat in video length.

    python bench/latency.py [--minutes 1 5 20 60 --streams 1 8 --block 8] [--tiny]
"""

from __future__ import annotations

import time

import numpy as np
from common import gpu_memory_gib, kv_bytes_per_token, parser, report, rollout_config, setup, stack, videos

from streamreason.envs.pool import EnvPool
from streamreason.rollout.loop import run_rollouts
from streamreason.rollout.memory import MemoryConfig


def run(s, engine_pair, n_streams: int, seconds: int, marks: list[int], args) -> list[list]:
    rows = videos(s, n_streams, seconds, seed=n_streams)
    cfg = rollout_config(s, window=20, block=args.block, group=1, text_sink_tokens=args.text_sink,
                         text_recent_tokens=args.text_recent)  # fmt: skip
    encoder, engine = engine_pair
    done_at: dict[int, float] = {}  # chunk -> wall time its last stream finished the turn
    context: dict[int, int] = {}
    memory: dict[int, float] = {}

    replies: dict[int, int] = {}
    kv = kv_bytes_per_token(s.model_dir)
    out: list[list] = []

    def on_turn(traj, rec):
        k = rec.chunk_index
        done_at[k] = time.perf_counter()
        context[k] = max(context.get(k, 0), len(rec.prompt_ids))
        replies[k] = replies.get(k, 0) + 1
        if (k + 1) in marks_chunks and replies[k] == n_streams:  # every stream has answered chunk k
            memory[k] = gpu_memory_gib()
            lat = np.diff([start] + [done_at[j] for j in range(k + 1)]) * 1000
            window = lat[max(0, k + 1 - args.window) :]
            out.append([f"{n_streams} stream(s)", (k + 1) * cfg.env.chunk_seconds / 60,
                        float(np.percentile(window, 50)), float(np.percentile(window, 95)), memory[k],
                        context[k], n_streams * context[k] * kv / 2**30])  # fmt: skip
            print("mark", out[-1], flush=True)  # progress of long runs (minutes per mark)

    marks_chunks = {int(m * 60 / cfg.env.chunk_seconds) for m in marks}
    with EnvPool(cfg.env, num_workers=min(n_streams, 4), in_process=s.tiny) as pool:
        start = time.perf_counter()
        _, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg, on_turn=on_turn)
    assert not failures, failures
    return out


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20, 60], help="video lengths to report")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8], help="concurrent streams")
    p.add_argument("--block", type=int, default=8, help="eviction block B")
    p.add_argument("--window", type=int, default=60, help="chunks before each mark whose latencies count")
    p.add_argument("--text-sink", type=int, default=512, help="text tokens kept from the start")
    p.add_argument("--text-recent", type=int, default=1536, help="text tokens kept from the end")
    args = p.parse_args(argv)
    s = setup(args)
    if s.tiny:
        args.minutes, args.streams, args.window = [0.05, 0.1], [1, 2], 3
    seconds = int(max(args.minutes) * 60)
    memory = MemoryConfig(window_chunks=20, evict_block=args.block)
    engine_pair = stack(s, "transformers" if s.tiny else "vllm", max_videos=memory.max_videos(seconds))
    table = [r for n in args.streams for r in run(s, engine_pair, n, seconds, args.minutes, args)]
    return report(
        "Per-chunk latency against video length (memory W=20)",
        ["streams", "video min", "p50 ms", "p95 ms", "GPU GiB (device)", "context tokens", "KV GiB (contexts)"],
        table, s,
        {"block": args.block, "window_chunks": 20, "text_sink": args.text_sink, "text_recent": args.text_recent,
         "latency_window_chunks": args.window, "size": s.size, "eager": s.eager,
         "gpu_memory_utilization": s.gpu_memory_utilization},
        args.out,
        ["GPU GiB (device) includes vLLM's KV reservation (gpu_memory_utilization); KV GiB (contexts) is what the "
         "live contexts need: streams x context tokens x KV bytes per token."],
    )  # fmt: skip


if __name__ == "__main__":
    main()
