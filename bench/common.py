"""Shared set-up of the benchmarks: model, videos, ThinkStream's rollout settings, engines,
result tables.

Every script runs a Qwen2.5-VL-3B-shaped model with random (dummy) weights on the GPU at
ThinkStream's settings (1 s chunks, 2 frames per chunk, 128-192 x 28^2 pixels per frame, think
budget 20, 30 new tokens per turn, fixed output lengths, group 8), or, with ``--tiny``, the
tiny model with the transformers engine on the CPU: a smoke run that checks the script, not
a measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from streamreason.envs.stream import EnvConfig
from streamreason.rollout.engine import Engine, Generation, SamplingConfig
from streamreason.rollout.loop import RolloutConfig
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import ProtocolConfig

# ThinkStream (arXiv 2603.12938): 1 s chunks, 2 frames, 128-192 x 28^2 pixels, think budget 20, 30 tokens.
THINKSTREAM_ENV = dict(chunk_seconds=1.0, frames_per_chunk=2, min_pixels=128 * 28 * 28, max_pixels=192 * 28 * 28,
                       max_chunks=None)  # fmt: skip
TINY_ENV = dict(
    chunk_seconds=1.0, frames_per_chunk=2, min_pixels=56 * 56, max_pixels=112 * 112, max_chunks=None
)


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--tiny", action="store_true", help="CPU smoke run with the tiny model (not a measurement)"
    )
    p.add_argument("--size", default="3b", choices=("3b", "7b"), help="reference model shape (dummy weights)")
    p.add_argument("--work", help="folder for the model config and videos (default: a temporary folder)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.8, help="vLLM's share of GPU memory")
    p.add_argument(
        "--eager", action="store_true", help="vLLM without CUDA graphs (faster start, slower decode)"
    )
    p.add_argument("--skip-mm-profiling", action="store_true", help="vLLM profiles the language model only")
    return p


@dataclass
class Setup:
    """What a benchmark runs on.

    Attributes:
        tiny: CPU smoke mode.
        model_dir: checkpoint folder (config, tokenizer, processor; no weights for the reference shapes).
        device: ``cuda`` or ``cpu``.
        work: folder for videos and the model.
    """

    tiny: bool
    model_dir: Path
    device: str
    work: Path
    size: str
    gpu_memory_utilization: float
    eager: bool
    skip_mm_profiling: bool = False


def setup(args, need_gpu: bool = True) -> Setup:
    """Build the model folder (tiny, or the reference shape) under ``--work``; exits when the
    reference run ``need_gpu`` and there is no CUDA device."""
    from streamreason.modeling import build_reference_config, build_tiny_model

    work = Path(args.work or tempfile.mkdtemp(prefix="streamreason-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        model_dir = work / "tiny"
        if not (model_dir / "config.json").exists():
            build_tiny_model(model_dir)
        device = "cpu"
    else:
        if need_gpu and not torch.cuda.is_available():
            sys.exit("this benchmark needs a CUDA GPU; use --tiny for a CPU smoke run")
        model_dir = work / f"qwen2_5_vl_{args.size}"
        if not (model_dir / "config.json").exists():
            build_reference_config(model_dir, args.size)
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Setup(args.tiny, model_dir, device, work, args.size, args.gpu_memory_utilization, args.eager,
                 args.skip_mm_profiling)  # fmt: skip


def env_config(s: Setup) -> EnvConfig:
    return EnvConfig(**(TINY_ENV if s.tiny else THINKSTREAM_ENV))


def rollout_config(s: Setup, *, window: int = 20, block: int = 1, keep_all_video: bool = False, group: int = 8,
                   text_recent_tokens: int = 0, text_sink_tokens: int = 0, eviction: str = "rewrite") -> RolloutConfig:  # fmt: skip
    """ThinkStream's rollout settings with fixed output lengths (every turn 30 tokens)."""
    protocol = ProtocolConfig(think_budget=20, max_new_tokens=30)
    memory = MemoryConfig(window_chunks=window, evict_block=block, keep_all_video=keep_all_video,
                          text_sink_tokens=text_sink_tokens, text_recent_tokens=text_recent_tokens,
                          eviction=eviction)  # fmt: skip
    return RolloutConfig(env=env_config(s), protocol=protocol, memory=memory,
                         sampling=SamplingConfig(min_new_tokens=protocol.max_new_tokens), group_size=group)  # fmt: skip


def videos(s: Setup, n: int, seconds: int, seed: int = 0):
    """``n`` synthetic streams of ``seconds`` each (real H.264 MP4s, cached under ``work``)."""
    from streamreason.envs.synthetic import synthesize
    from streamreason.types import read_rows

    out = s.work / f"videos_{n}x{seconds}s_{seed}"
    data = out / "data.jsonl"
    if not data.exists():
        synthesize(out, n, seed, min_seconds=seconds, max_seconds=seconds, video_fps=4)
    rows, bad = read_rows(data)
    assert not bad, bad
    return rows


def reference_encoder(s: Setup):
    """The watch-think-speak :class:`~streamreason.rollout.chat.ChatEncoder` of the benchmark's
    model folder (its processor and tokenizer; no weights needed)."""
    from transformers import AutoProcessor

    from streamreason.stack import make_encoder

    return make_encoder(AutoProcessor.from_pretrained(s.model_dir), rollout_config(s))


def stack(s: Setup, engine: str, max_videos: int, seed: int = 0, memory: MemoryConfig | None = None):
    """``(encoder, engine)`` built by :func:`streamreason.stack.build_policy`, as every job builds
    them: the transformers engine (fp32 tiny model, or the reference shape with random bf16
    weights) or the vLLM engine (``load_format="dummy"``), taking ``max_videos`` videos a prompt;
    ``memory`` (default: the recipe default) decides whether vLLM runs the span-mask plugin."""
    from streamreason.config import load_config
    from streamreason.stack import build_policy

    dtype = "float32" if s.tiny else "bfloat16"
    cfg = load_config(None, [
        f"model={s.model_dir}", f"engine.name={engine}", f"engine.device={s.device}", f"engine.dtype={dtype}",
        f"engine.seed={seed}", "engine.max_batch_size=64", f"engine.load_format={'auto' if s.tiny else 'dummy'}",
        f"engine.gpu_memory_utilization={s.gpu_memory_utilization}", f"engine.enforce_eager={s.eager}",
        "engine.max_model_len=32768", f"engine.skip_mm_profiling={s.skip_mm_profiling}",
        *([] if memory is None else [f"rollout.memory.window_chunks={memory.window_chunks}",
                                     f"rollout.memory.evict_block={memory.evict_block}",
                                     f"rollout.memory.keep_all_video={memory.keep_all_video}",
                                     f"rollout.memory.eviction={memory.eviction}"]),
    ])  # fmt: skip
    policy = build_policy(cfg, video_limit=max_videos)
    return policy.encoder, policy.engine


class InstantEngine(Engine):
    """Answers every request at once with the same silent turn of exactly ``new_tokens`` tokens
    (``<think>`` filler ``</think><silent><|im_end|>``, log-probs 0): the loop's own cost, or
    turn rows of the shape a fixed-length rollout gives, without a model."""

    def __init__(self, encoder, new_tokens: int = 30):
        head, tail = encoder.text("<think>"), [*encoder.text("</think><silent>"), encoder.end_of_turn_id]
        filler = encoder.text(" the scene goes on")
        body = (filler * new_tokens)[: max(new_tokens - len(head) - len(tail), 0)]
        self.ids = [*head, *body, *tail]

    def generate(self, requests, sampling, max_new_tokens, think_budget=None):
        n = len(self.ids)
        return [Generation(list(self.ids), [0.0] * n, [False] * n, "stop") for _ in requests]


def top_functions(profile, n: int, match: tuple[str, ...] = ()) -> list[tuple[float, str]]:
    """The ``n`` functions of a ``cProfile.Profile`` with the most cumulative seconds, as
    ``(seconds, "name (file:line)")``, best first; only files whose path holds one of ``match``
    (all when empty)."""
    import pstats

    stats = pstats.Stats(profile).stats
    rows = sorted(((v[3], f"{k[2]} ({k[0].rsplit('/', 1)[-1]}:{k[1]})") for k, v in stats.items()
                   if not match or any(m in k[0] for m in match)), reverse=True)  # fmt: skip
    return rows[:n]


def device_line() -> str:
    """The machine, in words: GPU (or CPU), torch, vLLM when installed."""
    parts = [torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86'})",
             f"torch {torch.__version__}"]  # fmt: skip
    try:
        import vllm

        parts.append(f"vLLM {vllm.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def gpu_memory_gib() -> float:
    """GPU memory in use on the device (all processes), GiB; NaN on CPU."""
    if not torch.cuda.is_available():
        return float("nan")
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


def kv_bytes_per_token(model_dir: Path) -> int:
    """Bytes of KV cache one context token takes in bf16: ``2 * layers * kv_heads * head_dim * 2``."""
    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 2


class Timer:
    """Wall time of a block, seconds (CUDA synchronised)."""

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0


class TimedCalls:
    """Wraps ``obj.method`` to add up its wall time (seconds, CUDA synchronised) and calls.

    Example: ``with TimedCalls(engine, "generate") as gen: ...; gen.seconds``.
    """

    def __init__(self, obj, method: str):
        self.obj, self.method, self.seconds, self.calls = obj, method, 0.0, 0

    def __enter__(self):
        inner = getattr(self.obj, self.method)

        def timed(*a, **kw):
            with Timer() as t:
                out = inner(*a, **kw)
            self.seconds += t.seconds
            self.calls += 1
            return out

        setattr(self.obj, self.method, timed)
        return self

    def __exit__(self, *exc):
        delattr(self.obj, self.method)  # back to the class's method


def report(title: str, columns: list[str], rows: list[list], s: Setup, config: dict, out: str | None,
           notes: list[str] = ()) -> dict:  # fmt: skip
    """Print a table with the device, config and command; write it as JSON to ``out``."""
    from rich.console import Console
    from rich.table import Table

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    table = Table(title=title, caption=f"{device_line()}\n{command}")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[_fmt(x) for x in r])
    console = Console(width=200)
    console.print(table)
    console.print("config: " + json.dumps(config))
    for n in notes:
        console.print(n)
    result = {"title": title, "device": device_line(), "command": command, "config": config, "tiny": s.tiny,
              "columns": columns, "rows": rows, "notes": list(notes)}  # fmt: skip
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str))
    return result


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 10 else f"{x:,.1f}"
    return str(x)
