"""Learner: tokens/s and MFU of one GRPO update on reference-size turn rows, one GPU.

The rows are turn rows of ThinkStream's shape: the real env, memory (W=20, B=1: one row per
turn once the window is full) and protocol over a synthetic MP4, G trajectories, with every
turn's reply a fixed 30-token silent turn (``common.InstantEngine``; a policy with random
weights would sample the same lengths under ``min_new_tokens``, as the rollout benchmarks do).
Old log-probs come from the learner's own scoring pass (timed). Each variant then runs one
GRPO update over all rows (``rl.mini_batches=1``: one optimizer step), bf16, AdamW, on the same
rows and weights:

- ``per-row vision``: the vision tower runs inside every row's forward (the model's own path);
- ``shared vision``: once per distinct chunk of the mini-batch (``learner.VisionCache``);
- micro-batches of 2 padded rows or 1 unpadded row; gradient checkpointing on or off.

MFU = model FLOPs / (time x peak). Model FLOPs of an update = per row of S tokens,
6 N_lm S + 6 L d S^2 (the dense matmuls forward and backward, Kaplan et al. 2020, 6N per
token; causal attention scores and values, PaLM, arXiv 2204.02311, appendix B, halved for the
mask), plus 6 N_vit P over the P patches of the distinct chunks: the work the update needs,
the same for every variant. Recomputation is not counted. Peak: H100/H200 bf16 dense 989
TFLOP/s.

    python bench/learner.py [--seconds 24 --group 8 --variants shared-1 per-row-2] [--tiny]
"""

from __future__ import annotations

import numpy as np
import torch
from common import InstantEngine, TimedCalls, Timer, parser, report, rollout_config, setup, videos

from streamreason.envs.pool import EnvPool
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import Learner, OptimConfig
from streamreason.rl.rows import build_rows
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.loop import run_rollouts
from streamreason.rollout.protocol import get_protocol

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
# name: (shared vision, rows per micro-batch, gradient checkpointing)
VARIANTS = {
    "per-row-2": (False, 2, True),
    "per-row-1": (False, 1, True),
    "shared-2": (True, 2, True),
    "shared-1": (True, 1, True),
    "shared-1-nockpt": (True, 1, False),
}


def peak_flops() -> float:
    if not torch.cuda.is_available():
        return float("nan")
    name = torch.cuda.get_device_name()
    return 1e12 * next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


def model_flops(model, rows) -> float:
    """FLOPs one update over ``rows`` needs (module docstring)."""
    text = model.config.text_config
    vit = sum(p.numel() for p in model.model.visual.parameters())
    lm = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n and "embed_tokens" not in n)
    seq = np.array([len(r.input_ids) for r in rows], dtype=np.float64)
    chunks = {id(v): v for r in rows for v in r.videos}.values()
    patches = sum(len(v.tensors["pixel_values_videos"]) for v in chunks)
    return float(
        (6 * lm * seq + 6 * text.num_hidden_layers * text.hidden_size * seq**2).sum() + 6 * vit * patches
    )


def turn_rows(s, seconds: int, group: int, window: int, encoder):
    """Turn rows of one ``seconds`` stream x ``group`` trajectories (fixed 30-token replies)."""
    cfg = rollout_config(s, window=window, block=1, group=group)
    with EnvPool(cfg.env, num_workers=2, in_process=s.tiny) as pool:
        trajs, failures = run_rollouts(videos(s, 1, seconds), pool=pool, engine=InstantEngine(encoder),
                                       encoder=encoder, cfg=cfg)  # fmt: skip
    assert not failures, failures
    return build_rows(trajs, [1.0 if i % 2 else -1.0 for i in range(len(trajs))])


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=24, help="video length of the rollout, seconds")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="updates to time, each on the same rows and weights")  # fmt: skip
    args = p.parse_args(argv)
    s = setup(args)
    window = 20
    if s.tiny:
        args.seconds, args.group, window = 5, 2, 3
    from streamreason.modeling import load_policy, random_policy

    dtype = torch.float32 if s.tiny else torch.bfloat16
    model, processor = (load_policy if s.tiny else random_policy)(s.model_dir, dtype=dtype, device=s.device)
    train = turn_rows(
        s, args.seconds, args.group, window, ChatEncoder(processor, get_protocol("watch_think_speak"))
    )
    optim = OptimConfig(lr=1e-6, dtype="float32" if s.tiny else "bfloat16", gradient_checkpointing=False)
    learner = Learner(model, optim, GRPOConfig(mini_batches=1), total_steps=len(args.variants),
                      pad_id=processor.tokenizer.pad_token_id)  # fmt: skip
    tokens = sum(len(r.input_ids) for r in train)
    flops = model_flops(model, train)
    chunks = len({id(v) for r in train for v in r.videos})
    table = []
    for name in args.variants:
        share, micro, ckpt = VARIANTS[name]
        learner.share_vision, learner.grpo.micro_batch_rows = share, micro
        if ckpt and not s.tiny:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            with Timer() as score:
                old = learner.logprobs(train)
            for r, lp in zip(train, old):
                r.old_logprobs = np.where(r.loss_mask > 0, lp, 0).astype(np.float32)
            with TimedCalls(model.model.visual, "forward") as tower, Timer() as t:
                metrics = learner.grpo_update(train)
        except torch.OutOfMemoryError:  # a result too: this variant does not fit
            learner.optimizer.zero_grad(set_to_none=True)
            table.append([name, micro, ckpt, len(train), tokens, *[float("nan")] * 9, "OOM", float("nan")])
            print(f"{name}: out of memory", flush=True)
            continue
        stats = torch.cuda.memory_stats() if torch.cuda.is_available() else {}
        table.append([name, micro, ckpt and not s.tiny, len(train), tokens, t.seconds, tokens / t.seconds,
                      flops / t.seconds / 1e12, 100 * flops / t.seconds / peak_flops(), tower.seconds, tower.calls,
                      score.seconds, stats.get("allocated_bytes.all.peak", float("nan")) / 2**30,
                      stats.get("num_alloc_retries", 0), metrics["loss"], metrics["grad_norm"]])  # fmt: skip
        print(table[-1], flush=True)  # progress: one line per variant
    return report(
        f"Learner: one GRPO update on turn rows (W={window}, B=1, G={args.group}, {args.seconds} s stream, "
        f"{len(train)} rows, {chunks} distinct chunks, mean row {tokens / len(train):,.0f} tokens)",
        ["variant", "micro-batch rows", "grad ckpt", "rows", "tokens", "update s", "tokens/s", "model TFLOP/s",
         "MFU %", "vision fwd s", "vision calls", "scoring pass s", "peak GiB (torch)", "alloc retries", "loss",
         "grad norm"], table, s,
        {"dtype": optim.dtype, "size": s.size, "attention": model.config._attn_implementation,
         "model_tflops_per_update": flops / 1e12, "distinct_chunks": chunks},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
