"""The vLLM engine: the transformers engine's interface on vLLM (GPU), prefix caching on.

Prompts go in as token ids, exactly as memory built them, with each chunk's raw frames: vLLM
runs the model's own processor on the frames and expands one ``<|video_pad|>`` per video back to
the feature count, so the prompt is sent with each placeholder run collapsed (as verl's server
does, ``verl/workers/rollout/utils.py:qwen2_5_vl_dedup_image_tokens``) and the expanded prompt
vLLM reports back is checked against ours token for token: a processor that resized or
re-timed the frames differently fails loudly instead of training on a context the policy never
saw. Frames are passed with ``do_resize=False`` and their fps metadata, as
:meth:`~streamreason.rollout.chat.ChatEncoder.video` encodes them, and with each chunk's content
hash (:attr:`~streamreason.rollout.chat.VideoSegment.uid`) as its ``multi_modal_uuids`` entry:
vLLM's processor and encoder caches are keyed by it, so a chunk that every turn of a window
re-sends is hashed once, when the loop encodes it, not once per request.

Log-probs are vLLM's ``raw_logprobs``: ``log_softmax`` of the full distribution before
temperature and top-k / top-p, i.e. this project's convention (``rollout/engine.py``) at
temperature 1, the temperature every shipped recipe trains at. At other temperatures they are
still the untempered log-probs; :class:`VLLMEngine` warns once.

The think budget cannot force tokens inside vLLM's sampler, so a turn that overruns it is cut
where the budget would have forced the close tag, the close tag is appended (``forced``,
log-prob 0, masked out of the loss) and sampling continues after it in a second request that
hits the prefix cache: the same distribution as forcing step by step (:meth:`ThinkBudget.cut`).
A forced end-of-turn token (ThinkStream's, at ``max_new_tokens - 1``) replaces the sample's
last token the same way (:func:`finish_turn`).

vLLM reads the vocabulary from the checkpoint folder, so the folder itself must hold the
protocol tags as single tokens (``streamreason.modeling.require_protocol_tokens``), checked
before vLLM starts.

Weights are pushed in place between GRPO steps (:meth:`VLLMEngine.update_weights`, vLLM's
``load_weights`` through ``collective_rpc``), then the prefix and encoder caches are reset; the
engine is never restarted.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

import numpy as np
import torch

from streamreason.errors import ConfigError
from streamreason.modeling import require_protocol_tokens
from streamreason.rollout import vllm_span_mask
from streamreason.rollout.engine import (
    BudgetCut,
    Engine,
    GenerationRequest,
    SamplingConfig,
    ThinkBudget,
    banned_token_ids,
    finish_turn,
    register_engine,
)


def collapse_placeholders(ids: list[int], placeholder_ids: set[int]) -> list[int]:
    """``ids`` with every run of one placeholder token reduced to a single token."""
    out: list[int] = []
    for t in ids:
        if not (out and t == out[-1] and t in placeholder_ids):
            out.append(t)
    return out


def vllm_videos(videos) -> list[tuple[np.ndarray, dict]]:
    """``(frames [F, H, W, 3] uint8, metadata)`` per :class:`VideoSegment`: vLLM's video items."""
    return [(v.frames, v.metadata()) for v in videos]


# vLLM 0.24 hands Qwen2/2.5-VL's processor the frames without their metadata
# (``video_needs_metadata=False``), so it assumes transformers' default fps: temporal positions
# inside a chunk would differ from the rollout's when a chunk spans several temporal patches.
_FPS_BLIND = ("qwen2_vl", "qwen2_5_vl")


def check_video_timing(videos, model_type: str) -> None:
    """Refuse chunks whose temporal positions vLLM would compute differently from the rollout.

    Raises:
        ConfigError: ``model_type`` is Qwen2/2.5-VL and a chunk holds more than one temporal
            patch (``frames_per_chunk`` above the temporal patch size, 2).
    """
    if model_type not in _FPS_BLIND:
        return
    for v in videos:
        if int(v.tensors["video_grid_thw"][0, 0]) > 1:
            raise ConfigError(
                f"vLLM drops the video fps of {model_type}, so a chunk of {len(v.frames)} frames would get "
                "other temporal positions than the rollout's: set env.frames_per_chunk=2 (ThinkStream's "
                "setting) or use engine.name=transformers"
            )


def _load_weights(worker, weights):
    """Runs inside vLLM's worker (``collective_rpc``): load HF-named tensors into the model."""
    worker.model_runner.model.load_weights(weights=weights)


@register_engine("vllm")
class VLLMEngine(Engine):
    """Batched generation with ``vllm.LLM`` (one GPU, or ``tensor_parallel_size`` GPUs).

    It takes new weights in place (:attr:`~streamreason.rollout.engine.Engine.updates_weights`)
    and reports its prefix-cache hits (``reports_prefix_cache``).

    Args:
        model_dir: a Hugging Face Qwen-VL checkpoint folder.
        tokenizer: its tokenizer (end-of-turn and placeholder ids).
        max_videos: most videos one prompt holds (the memory policy's
            :meth:`~streamreason.rollout.memory.MemoryConfig.max_videos`).
        dtype: ``bfloat16``, ``float16`` or ``float32``.
        gpu_memory_utilization: share of GPU memory vLLM may take.
        max_model_len: context length in tokens (0: the model's).
        enforce_eager: no CUDA graphs (faster start, slower decode).
        enable_prefix_caching: reuse the KV of shared prompt prefixes (turn t+1 extends turn t).
        tensor_parallel_size: GPUs per engine.
        seed: sampler seed.
        load_format: ``auto``, or ``dummy`` for random weights of the checkpoint's shape.
        skip_mm_profiling: profile memory with the language model only (vLLM's
            ``skip_mm_profiling``): a faster start; the vision encoder's activations must fit
            outside ``gpu_memory_utilization``.
        span_masks: requests may carry masked spans (``memory.eviction=mask``): vLLM runs its
            FlexAttention backend with this project's plugin (:mod:`streamreason.rollout.vllm_span_mask`).
        cache_salt: salts every request's prefix-cache hashes (the memory settings that shape
            the masks: a prefix's keys and values depend on them).

    Raises:
        ConfigError: the checkpoint's tokenizer lacks the protocol tags (or its model the rows
            for them), vLLM is not installed, or no CUDA device.

    Attributes:
        llm: the in-process ``vllm.LLM``, for what this interface does not cover (benchmarks
            time and profile its ``generate``).
    """

    updates_weights = True
    reports_prefix_cache = True

    def __init__(
        self, model_dir: str, tokenizer, *, max_videos: int = 32, dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5, max_model_len: int = 0, enforce_eager: bool = False,
        enable_prefix_caching: bool = True, tensor_parallel_size: int = 1, seed: int = 0,
        load_format: str = "auto", skip_mm_profiling: bool = False, span_masks: bool = False,
        cache_salt: str | None = None,
    ):  # fmt: skip
        require_protocol_tokens(model_dir)
        if not torch.cuda.is_available():
            raise ConfigError("engine.name=vllm needs a CUDA GPU; use engine.name=transformers on CPU")
        try:
            import vllm
        except ImportError:
            raise ConfigError("engine.name=vllm needs vLLM: pip install -e '.[gpu]'") from None
        # In-process engine core: weights can be pushed into the model without copies.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.vllm = vllm
        kwargs = dict(max_model_len=max_model_len) if max_model_len else {}
        if span_masks:
            os.environ[vllm_span_mask.ENV_FLAG] = "1"  # the plugin's switch, in every vLLM process
            vllm_span_mask.register()  # this process's engine core (in-process) even without the entry point
            kwargs["attention_backend"] = "FLEX_ATTENTION"
        self.span_masks, self.cache_salt = span_masks, cache_salt
        self.llm = vllm.LLM(
            model=str(model_dir), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
            tensor_parallel_size=tensor_parallel_size, seed=seed, load_format=load_format,
            limit_mm_per_prompt={"video": max_videos, "image": 0}, logprobs_mode="raw_logprobs",
            skip_mm_profiling=skip_mm_profiling,
            **kwargs,
        )  # fmt: skip
        vocab = tokenizer.get_vocab()
        self.end_ids = [vocab["<|im_end|>"]]
        self.placeholders = {vocab[t] for t in ("<|video_pad|>", "<|image_pad|>") if t in vocab}
        self.logit_bias = {t: -100.0 for t in banned_token_ids(tokenizer)}
        self.model_type = self.llm.llm_engine.model_config.hf_config.model_type
        self._warned = False

    def _params(self, sampling: SamplingConfig, max_tokens: int):
        if sampling.temperature not in (0.0, 1.0) and not self._warned:
            warnings.warn("vLLM engine: log-probs are untempered at temperature != 1", stacklevel=3)
            self._warned = True
        greedy = sampling.temperature <= 0
        return self.vllm.SamplingParams(
            n=1, temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p, top_k=-1 if greedy or sampling.top_k <= 0 else sampling.top_k,
            max_tokens=max_tokens, min_tokens=min(sampling.min_new_tokens, max_tokens),
            stop_token_ids=self.end_ids, logprobs=0, logit_bias=self.logit_bias or None,
            detokenize=False, skip_special_tokens=False,
            # a per-request seed drawn from torch's CPU generator, which checkpoints hold: --resume
            # samples what the uninterrupted run samples (vLLM's own generator starts afresh)
            seed=None if greedy else int(torch.randint(2**62, ())),
        )  # fmt: skip

    def _run(
        self, requests: list[GenerationRequest], tails: list[list[int]], sampling, max_tokens: list[int]
    ):
        """One vLLM call: request ``i`` continues ``prompt_ids + tails[i]``; returns its completions
        and the prompt tokens each found in the prefix cache."""
        prompts = []
        for r, tail in zip(requests, tails):
            prompt = {"prompt_token_ids": collapse_placeholders(r.prompt_ids + tail, self.placeholders)}
            if self.cache_salt:
                prompt["cache_salt"] = self.cache_salt
            if r.videos:
                check_video_timing(r.videos, self.model_type)
                prompt["multi_modal_data"] = {"video": vllm_videos(r.videos)}
                # content ids computed once per chunk: vLLM skips hashing every chunk's frames again
                prompt["multi_modal_uuids"] = {"video": [v.uid for v in r.videos]}
                prompt["mm_processor_kwargs"] = {"do_resize": False}
            prompts.append(prompt)
        params = [self._params(sampling, m) for m in max_tokens]
        for r, p in zip(requests, params):
            if r.masked_spans:
                if not self.span_masks:
                    raise ConfigError("a request has masked spans (memory.eviction=mask) but the vLLM engine was "
                                      "built without span_masks=True")  # fmt: skip
                p.extra_args = {vllm_span_mask.SPANS_KEY: [list(s) for s in r.masked_spans]}
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        for r, tail, out in zip(requests, tails, outs):
            if list(out.prompt_token_ids) != r.prompt_ids + tail:
                raise ConfigError(
                    f"vLLM expanded the prompt of {r.key} to {len(out.prompt_token_ids)} tokens, the rollout "
                    f"built {len(r.prompt_ids) + len(tail)}: its processor encodes the frames differently "
                    "(resize or frames per chunk): check the model's processor config against env.*"
                )
        return [out.outputs[0] for out in outs], [out.num_cached_tokens or 0 for out in outs]

    @staticmethod
    def _unpack(completion) -> tuple[list[int], list[float]]:
        ids = list(completion.token_ids)
        lps = [step[t].logprob for t, step in zip(ids, completion.logprobs)]
        return ids, lps

    def generate(self, requests, sampling, max_new_tokens, think_budget: ThinkBudget | None = None):
        first, cached = self._run(
            requests, [[] for _ in requests], sampling, [max_new_tokens] * len(requests)
        )
        out = [finish_turn(*self._unpack(c), self.end_ids, think_budget, max_new_tokens) for c in first]
        redo = [i for i, g in enumerate(out) if isinstance(g, BudgetCut)]
        if redo:
            tails = [out[i].token_ids for i in redo]
            second, _ = self._run(
                [requests[i] for i in redo], tails, sampling, [max_new_tokens - len(t) for t in tails]
            )
            for i, c in zip(redo, second):
                out[i] = finish_turn(
                    *self._unpack(c), self.end_ids, think_budget, max_new_tokens, resumed=out[i]
                )
        for g, n in zip(out, cached, strict=True):  # the turn's prompt, as first sent
            g.cached_prompt_tokens = n
        return out

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights (Hugging Face parameter names); drop the prefix cache and the
        encoder cache (video embeddings the old vision tower computed)."""
        self.llm.collective_rpc(_load_weights, args=(list(weights),))
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def close(self) -> None:
        """Shut the in-process engine core down and free its GPU memory (weights, KV cache,
        CUDA graphs), as vLLM's own tests do between engines (``cleanup_dist_env_and_memory``)."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()

    def reset_prefix_cache(self) -> None:
        """Drop vLLM's cached prompt prefixes (the encoder cache stays: same weights)."""
        self.llm.reset_prefix_cache()
