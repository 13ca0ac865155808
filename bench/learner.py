"""Learner: tokens/s and MFU of one GRPO update on reference-size turn rows, one GPU.

Rows come from a real rollout (vLLM engine, memory W=20, B=1: one row per turn, ThinkStream's
settings), so they hold exactly the contexts the policy saw. The update is one optimizer step
over all rows (``rl.mini_batches=1``) in micro-batches of ``--micro-rows`` rows (one update per
value: padded pairs against single unpadded rows), bf16, gradient checkpointing, AdamW.

MFU = model FLOPs / (time x peak), model FLOPs per row of S tokens (P vision patches) =
6 N_lm S + 6 L d S^2 / 2 x 2 + 6 N_vit P: the dense matmuls forward and backward (Kaplan et al.
2020, 6N per token), causal attention scores and values (PaLM, arXiv 2204.02311, appendix B,
halved for the causal mask), and the vision tower on its patches. Recomputation by gradient
checkpointing is not counted (model FLOPs, not hardware FLOPs). Peak: H100/H200 bf16 dense
989 TFLOP/s. The last columns time one micro-batch's phases (vision tower forward, whole
forward, forward and backward) to show where the update's time goes.

    python bench/learner.py [--seconds 40 --group 8 --micro-rows 2 1] [--tiny]
"""

from __future__ import annotations

import numpy as np
import torch
from common import Timer, parser, report, rollout_config, setup, stack, videos

from streamreason.envs.pool import EnvPool
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import Learner, OptimConfig
from streamreason.rl.rows import build_rows
from streamreason.rollout.loop import run_rollouts

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_flops() -> float:
    if not torch.cuda.is_available():
        return float("nan")
    name = torch.cuda.get_device_name()
    return 1e12 * next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


def model_flops(model, rows) -> float:
    """Training FLOPs of one pass over ``rows`` (module docstring)."""
    text = model.config.text_config
    vit = sum(p.numel() for p in model.model.visual.parameters())
    lm = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n and "embed_tokens" not in n)
    total = 0.0
    for r in rows:
        s = len(r.input_ids)
        patches = 4 * int((np.asarray(r.mm_token_type_ids) > 0).sum())  # 2x2 patches merge into one token
        total += 6 * lm * s + 6 * text.num_hidden_layers * text.hidden_size * s * s + 6 * vit * patches
    return total


def breakdown(learner, rows, micro_rows: int, pad_id: int) -> dict[str, float]:
    """Seconds of one micro-batch's phases: the vision tower's forward, the whole forward
    (vision, language model, log-probs), and forward plus backward (the parameters' gradients
    are zeroed after)."""
    from streamreason.rl.rows import collate

    model = learner.model
    batch = collate(rows[:micro_rows], pad_id)
    out = {}
    with torch.no_grad(), Timer() as t:
        if "pixel_values_videos" in batch:
            model.model.visual(batch["pixel_values_videos"].to(learner.device, model.dtype),
                               grid_thw=batch["video_grid_thw"].to(learner.device))  # fmt: skip
    out["vision forward s"] = t.seconds
    with torch.no_grad(), Timer() as t:
        learner._token_logprobs(model, batch)
    out["forward s"] = t.seconds
    with Timer() as t:
        logp, _ = learner._token_logprobs(model, batch)
        logp.sum().backward()
    out["forward+backward s"] = t.seconds
    model.zero_grad(set_to_none=True)
    return out


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=40, help="video length of the rollout, seconds")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--micro-rows", type=int, nargs="+", default=[2, 1],
                   help="rows per forward/backward; one update per value (1: no padding)")  # fmt: skip
    args = p.parse_args(argv)
    s = setup(args)
    window = 20
    if s.tiny:
        args.seconds, args.group, window = 5, 2, 3
    else:
        s.gpu_memory_utilization = min(s.gpu_memory_utilization, 0.25)  # the learner needs the rest
    rows = videos(s, 1, args.seconds)
    cfg = rollout_config(s, window=window, block=1, group=args.group)
    encoder, engine = stack(s, "transformers" if s.tiny else "vllm", max_videos=window)
    with EnvPool(cfg.env, num_workers=2, in_process=s.tiny) as pool:
        trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg)
    assert not failures, failures
    advantages = [1.0 if i % 2 else -1.0 for i in range(len(trajs))]
    train = build_rows(trajs, advantages)
    from streamreason.modeling import load_policy, random_policy

    dtype = torch.float32 if s.tiny else torch.bfloat16
    model, processor = (load_policy if s.tiny else random_policy)(s.model_dir, dtype=dtype, device=s.device)
    optim = OptimConfig(lr=1e-6, dtype="float32" if s.tiny else "bfloat16", gradient_checkpointing=not s.tiny)
    grpo = GRPOConfig(mini_batches=1, micro_batch_rows=args.micro_rows[0])
    learner = Learner(
        model, optim, grpo, total_steps=len(args.micro_rows), pad_id=processor.tokenizer.pad_token_id
    )
    tokens = sum(len(r.input_ids) for r in train)
    flops = model_flops(model, train)
    table = []
    for micro in args.micro_rows:  # one update per micro-batch size, same rows
        learner.grpo.micro_batch_rows = micro
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with Timer() as t:
            metrics = learner.grpo_update(train)
        phases = breakdown(learner, train, micro, processor.tokenizer.pad_token_id)
        table.append([micro, len(train), tokens, float(np.mean([len(r.input_ids) for r in train])), t.seconds,
                      tokens / t.seconds, flops / t.seconds / 1e12, 100 * flops / t.seconds / peak_flops(),
                      torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
                      metrics["loss"], metrics["grad_norm"], *phases.values()])  # fmt: skip
    return report(
        f"Learner: one GRPO update on turn rows (W={window}, B=1, G={args.group}, {args.seconds} s stream)",
        ["micro-batch rows", "rows", "tokens", "mean row tokens", "update s", "tokens/s", "model TFLOP/s", "MFU %",
         "peak GPU GiB (torch)", "loss", "grad norm", *(f"1 micro-batch: {k}" for k in phases)], table, s,
        {"gradient_checkpointing": optim.gradient_checkpointing,
         "dtype": optim.dtype, "size": s.size, "attention": model.config._attn_implementation},
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
