"""Generation engines: one turn for a batch of contexts.

The interface is narrow on purpose, so that a vLLM engine drops in beside the transformers one:
``generate(requests, sampling) -> generations``, where a request is a prompt as token ids plus
its multimodal tensors, and a generation carries the sampled token ids, the log-prob of each
under the policy and which tokens the :class:`ThinkBudget` forced (the think close tag, the
end-of-turn token at the last position). What else an engine can do (take new weights, share
the learner's module, report prefix-cache hits) it declares as class attributes of
:class:`Engine`, which callers read instead of probing for methods.

Log-probs are ``log_softmax(logits / temperature)`` of the full distribution (before top-k /
top-p truncation), the quantity verl's actor recomputes as ``old_log_prob``
(``verl/workers/actor/dp_actor.py``), so rollout and learner agree on the same weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from streamreason.errors import ConfigError
from streamreason.registry import Registry
from streamreason.rollout.chat import concat_videos, find_subsequence
from streamreason.rollout.protocol import THINK_BUDGET_COUNTS


@dataclass
class EngineConfig:
    """Generation engine.

    Attributes:
        name: registered engine: ``transformers`` (CPU or one GPU) or ``vllm`` (GPU).
        device: ``cpu``, ``cuda``, ``cuda:1``; ``auto`` picks CUDA when available.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        max_batch_size: contexts per generate call (transformers engine).
        seed: sampler seed.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache).
        tensor_parallel_size: GPUs per vLLM engine.
        max_model_len: vLLM context length in tokens (0: the model's own).
        enforce_eager: skip CUDA-graph capture (fast start, slower decode).
        enable_prefix_caching: reuse the KV of shared prompt prefixes across turns.
        load_format: ``auto`` (the checkpoint's weights), or ``dummy``: random weights of the
            checkpoint's shape, for speed and memory benchmarks (vLLM's ``load_format``; the
            transformers engine builds the model from its config).
        skip_mm_profiling: vLLM profiles memory with the language model only, not the vision
            encoder on maximum-size videos (start-up minutes shorter; leave GPU memory outside
            ``gpu_memory_utilization`` for the encoder's activations).
    """

    name: str = "transformers"
    device: str = "auto"
    dtype: str = "float32"
    max_batch_size: int = 64
    seed: int = 0
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    max_model_len: int = 0
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    load_format: str = "auto"
    skip_mm_profiling: bool = False


@dataclass
class SamplingConfig:
    """Sampling for rollouts (ThinkStream: T=1.0, top_k 50, top_p 0.95).

    Attributes:
        temperature: 0 means greedy.
        top_p: nucleus mass; 1.0 disables.
        top_k: 0 disables.
        min_new_tokens: the end-of-turn token is suppressed before this many tokens (0: never).
            Benchmarks set it to the turn's token limit for fixed output lengths.
    """

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    min_new_tokens: int = 0


@dataclass(frozen=True)
class ThinkBudget:
    """The tokens a turn is forced to: the think close tag once the budget is spent (ThinkStream's
    ``think_budget_sample``, ``thinkstream/model/inference.py``) and, when set, the end-of-turn token at the turn's last position.

    Forcing is a rule on the tokens generated so far, the same for every engine: at position
    ``i`` (0-based) of a turn of at most ``max_new_tokens`` tokens, given ``generated[:i]``,

    * ``i == max_new_tokens - 1`` and ``end_id`` set: the end-of-turn token (ThinkStream's
      ``StreamingInferenceEngine.generate``, ``thinkstream/model/inference.py``, forces its eos
      at step ``max_new_tokens - 1`` so that a cut turn still ends well formed);
    * else, ``budget > 0`` and no close tag yet: the close tag's ``j``-th token once the count
      passed the budget by ``j`` tokens. ``counts="span"`` counts the tokens after the open tag
      (nothing is forced before it: ``budget`` think tokens inside the span); ``"generated"``
      counts every generated token of the turn, ``<think>`` included, as ThinkStream's
      ``think_budget_sample`` does (``generated_length >= max_think_tokens`` and no
      ``</think>`` yet): a budget of 20 leaves 19 tokens inside the span.

    Attributes:
        open_ids: token ids of the think open tag (one id with the tags as added tokens,
            ``streamreason.modeling.add_protocol_tokens``).
        close_ids: token ids of the think close tag, forced one per step.
        budget: the count at which the close tag is forced (0 disables it).
        counts: ``"span"`` or ``"generated"`` (above).
        end_id: the end-of-turn token forced at ``max_new_tokens - 1``, or None.
    """

    open_ids: tuple[int, ...]
    close_ids: tuple[int, ...]
    budget: int
    counts: str = "span"
    end_id: int | None = None

    def __post_init__(self):
        if self.counts not in THINK_BUDGET_COUNTS:
            raise ConfigError(
                f"think budget counts must be one of {THINK_BUDGET_COUNTS}, got {self.counts!r}"
            )

    @property
    def active(self) -> bool:
        """Whether the rule can force any token."""
        return self.budget > 0 or self.end_id is not None

    def next_forced(self, generated: list[int], max_new_tokens: int) -> int | None:
        """The token forced at position ``len(generated)``, or None (sampled)."""
        i = len(generated)
        if self.end_id is not None and i == max_new_tokens - 1:
            return self.end_id
        if self.budget <= 0:
            return None
        start = 0
        if self.counts == "span":
            at = find_subsequence(generated, self.open_ids)
            if at < 0:
                return None
            start = at + len(self.open_ids)
        if find_subsequence(generated, self.close_ids, start) >= 0:
            return None
        over = i - start - self.budget
        return None if over < 0 else self.close_ids[min(over, len(self.close_ids) - 1)]

    def forced(self, generated: list[int], max_new_tokens: int) -> list[bool]:
        """For each generated position, whether the rule forced it."""
        return [self.next_forced(generated[:i], max_new_tokens) is not None for i in range(len(generated))]

    def cut(self, generated: list[int], max_new_tokens: int, start: int = 0) -> int | None:
        """The first position at or after ``start`` where the rule would have forced
        ``generated`` (sampled without it), or None.

        An engine that cannot force tokens mid-generation (vLLM) samples freely, keeps
        ``generated[:cut]``, appends the forced tokens and continues sampling after them
        (:func:`finish_turn`): the same distribution as forcing at each step (the tokens before
        ``cut`` are sampled from identical contexts).
        """
        if not self.active:
            return None
        return next(
            (
                i
                for i in range(start, len(generated))
                if self.next_forced(generated[:i], max_new_tokens) is not None
            ),
            None,
        )


@dataclass
class GenerationRequest:
    """One context to continue.

    Attributes:
        prompt_ids: token ids ``[P]``.
        mm_token_type_ids: modality per prompt token ``[P]`` (0 text, 1 image, 2 video).
        videos: the prompt's video segments (:class:`~streamreason.rollout.chat.VideoSegment`)
            in prompt order: processed tensors and raw frames (for engines that run their own
            processor).
        key: ``(row_id, group_index, chunk_index)`` of the turn (engines may ignore it; a
            scripted engine uses it to look up the turn's gold output).
        masked_spans: ``(start, end, from_position)`` token spans of the prompt hidden from the
            tokens at ``from_position`` on (``memory.eviction=mask``,
            :mod:`streamreason.rollout.attention`); empty: plain causal attention.
    """

    prompt_ids: list[int]
    mm_token_type_ids: list[int]
    videos: list = field(default_factory=list, repr=False)
    key: tuple | None = None
    masked_spans: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def mm_inputs(self) -> dict[str, torch.Tensor]:
        """The prompt's multimodal tensors (``pixel_values_videos``, ``video_grid_thw``, ...),
        videos concatenated in prompt order; {} for text only. Built on each access (a copy of
        every chunk's pixels): engines that batch requests concatenate all their videos once."""
        return concat_videos(self.videos)


@dataclass
class Generation:
    """One generated turn.

    Attributes:
        token_ids: generated ids ``[R]``, the end-of-turn token included when generated.
        logprobs: float ``[R]``, log-prob of each token under the temperature-scaled policy.
        forced: bool ``[R]``, tokens a :class:`ThinkBudget` forced (not sampled).
        finish_reason: ``"stop"`` (end-of-turn token) or ``"length"`` (max_new_tokens).
        cached_prompt_tokens: prompt tokens whose KV came from the engine's prefix cache
            (vLLM's ``RequestOutput.num_cached_tokens``); None for engines without one.
    """

    token_ids: list[int]
    logprobs: list[float]
    forced: list[bool]
    finish_reason: str
    cached_prompt_tokens: int | None = None


@dataclass
class BudgetCut:
    """A turn cut where the think budget forces the close tag (:meth:`ThinkBudget.cut`).

    Attributes:
        token_ids: the sampled tokens before the cut, then the forced close tag.
        logprobs: their log-probs (0 on forced tokens, which the loss masks out).
        forced: True on the close tag's tokens.
    """

    token_ids: list[int]
    logprobs: list[float]
    forced: list[bool]


def finish_turn(
    token_ids: list[int], logprobs: list[float], end_ids: list[int], budget: ThinkBudget | None,
    max_new_tokens: int, resumed: BudgetCut | None = None,
) -> Generation | BudgetCut:  # fmt: skip
    """A freely sampled turn (or its continuation after ``resumed``) as a :class:`Generation`
    with the budget's forced tokens, or the :class:`BudgetCut` to resume sampling from.

    For engines that cannot force tokens inside their sampler (vLLM, verl's server): sample
    ``max_new_tokens`` freely; at the first position the budget forces, the sample is cut and
    the forced tokens appended (log-prob 0, ``forced``). A forced end-of-turn token ends the
    turn (``"stop"``); a forced close tag gives a :class:`BudgetCut`: sample
    ``max_new_tokens - len(cut.token_ids)`` more after the prompt plus ``cut.token_ids`` and
    call again with the same ``budget`` and ``resumed=cut``.
    """
    head = resumed or BudgetCut([], [], [])
    ids, lps, forced = (
        head.token_ids + token_ids,
        head.logprobs + logprobs,
        head.forced + [False] * len(token_ids),
    )
    at = None if budget is None else budget.cut(ids, max_new_tokens, start=len(head.token_ids))
    if at is None:
        stop = bool(ids) and ids[-1] in end_ids
        return Generation(ids, lps, forced, "stop" if stop else "length")
    ids, lps, forced = ids[:at], lps[:at], forced[:at]
    while len(ids) < max_new_tokens and (token := budget.next_forced(ids, max_new_tokens)) is not None:
        ids, lps, forced = ids + [token], lps + [0.0], forced + [True]
        if token in end_ids:
            return Generation(ids, lps, forced, "stop")
    if len(ids) >= max_new_tokens:
        return Generation(ids, lps, forced, "length")
    return BudgetCut(ids, lps, forced)


class Engine:
    """Base class of generation engines.

    A subclass implements :meth:`generate` and declares its abilities by setting these class
    attributes (all False here); callers read them instead of probing for methods.

    Attributes:
        updates_weights: new policy weights can be loaded into the running engine
            (:meth:`update_weights`), which the trainer calls after each update (vLLM).
        shares_policy: the engine generates with a torch module, its ``model`` attribute, that
            the learner may own: in one process the learner's updates reach generation without
            a copy, and :meth:`set_policy` swaps the module (the transformers engine).
        reports_prefix_cache: :attr:`Generation.cached_prompt_tokens` is filled (vLLM); else it
            is None.
    """

    updates_weights: ClassVar[bool] = False
    shares_policy: ClassVar[bool] = False
    reports_prefix_cache: ClassVar[bool] = False

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig, max_new_tokens: int,
        think_budget: ThinkBudget | None = None,
    ) -> list[Generation]:  # fmt: skip
        """One turn for each request, in order."""
        raise NotImplementedError

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights, ``(Hugging Face parameter name, tensor)`` pairs, into the
        running engine (engines with :attr:`updates_weights`).

        Raises:
            NotImplementedError: the engine cannot (``updates_weights`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot load new weights (updates_weights is False)")

    def set_policy(self, module: torch.nn.Module) -> None:
        """Generate with ``module`` from now on (engines with :attr:`shares_policy`), e.g. the
        learner's model once LoRA has wrapped it.

        Raises:
            NotImplementedError: the engine holds no torch module (``shares_policy`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} holds no policy module (shares_policy is False)")

    def close(self) -> None:
        """Release what the engine holds on the device, so that another engine can start in this
        process (benchmarks switch engines). Engines sharing the policy module have nothing of
        their own to release."""

    def reset_prefix_cache(self) -> None:
        """Drop the cached prompt prefixes, so that the next prompts are computed afresh (a
        benchmark's runs start alike). Engines without a prefix cache have nothing to drop."""


_BUILTIN_MODULES = {"vllm": "streamreason.rollout.vllm_engine"}  # imported on first use (needs vLLM)
_ENGINES: Registry[type[Engine]] = Registry(
    "engine", config_key="engine.name", builtin_modules=_BUILTIN_MODULES
)


def register_engine(name: str):
    """Class decorator registering an :class:`Engine` subclass under ``name``.

    Raises:
        ValueError: ``name`` is taken by another class.
    """

    def wrap(cls):
        return _ENGINES.register(name, cls)

    return wrap


def make_engine(name: str, **kwargs) -> Engine:
    """Instantiate the engine registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    return _ENGINES.get(name)(**kwargs)


# Placeholders that only the processor may put in a prompt: a generated one would later be
# read as a slot for video features that do not exist, so engines never sample them.
VISION_PLACEHOLDERS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def banned_token_ids(tokenizer) -> list[int]:
    """Ids of :data:`VISION_PLACEHOLDERS` present in ``tokenizer``'s vocabulary."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in VISION_PLACEHOLDERS if t in vocab]


class _ThinkBudgetProcessor:
    """transformers LogitsProcessor applying a :class:`ThinkBudget` per row."""

    def __init__(self, budget: ThinkBudget, prompt_len: int, max_new_tokens: int):
        self.budget, self.prompt_len, self.max_new_tokens = budget, prompt_len, max_new_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()  # generate() keeps the unprocessed tensor as the raw logits
        for row, ids in enumerate(input_ids[:, self.prompt_len :].tolist()):
            token = self.budget.next_forced(ids, self.max_new_tokens)
            if token is not None:
                scores[row] = torch.finfo(scores.dtype).min
                scores[row, token] = 0.0
        return scores


@register_engine("transformers")
class TransformersEngine(Engine):
    """Batched generation with ``model.generate`` (CPU or one GPU).

    It shares the policy (:attr:`Engine.shares_policy`): it generates with :attr:`model` as the
    module is at each call, so a learner that owns the same module needs no weight sync.

    Args:
        model: a Qwen-VL ``...ForConditionalGeneration`` model.
        tokenizer: its tokenizer (pad and end-of-turn ids).
        max_batch_size: contexts per ``generate`` call.
        seed: seeds torch's global generator once, at construction (None: left as is).

    Attributes:
        model: the torch module it generates with (:meth:`set_policy` replaces it).
    """

    shares_policy = True

    def __init__(self, model, tokenizer, max_batch_size: int = 64, seed: int | None = None):
        if seed is not None:
            torch.manual_seed(seed)
        self.model = model
        self.max_batch_size = max_batch_size
        self.pad_id = tokenizer.pad_token_id
        self.end_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.banned_ids = banned_token_ids(tokenizer)

    def set_policy(self, module: torch.nn.Module) -> None:
        """Generate with ``module`` from now on (the learner's model, e.g. wrapped by LoRA)."""
        self.model = module

    @torch.no_grad()
    def generate(self, requests, sampling, max_new_tokens, think_budget=None):
        out: list[Generation] = []
        for i in range(0, len(requests), self.max_batch_size):
            batch = requests[i : i + self.max_batch_size]
            run = self._generate_masked if any(r.masked_spans for r in batch) else self._generate
            out.extend(run(batch, sampling, max_new_tokens, think_budget))
        return out

    def _left_padded(self, requests):
        """``(width, ids, types, mask, mm)``: the prompts left-padded to ``width`` (generation
        continues every row at its end), their 2-D mask and the videos' tensors on the device."""
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(requests):
            n = len(r.prompt_ids)
            ids[row, width - n :] = torch.tensor(r.prompt_ids)
            types[row, width - n :] = torch.tensor(r.mm_token_type_ids)
            mask[row, width - n :] = 1
        device = self.model.device
        mm = {k: v.to(device) for k, v in concat_videos([v for r in requests for v in r.videos]).items()}
        return width, ids.to(device), types.to(device), mask.to(device), mm

    def _generate(self, requests, sampling, max_new_tokens, think_budget):
        self.model.eval()  # the learner may have left it in train mode
        width, ids, types, mask, mm = self._left_padded(requests)
        greedy = sampling.temperature <= 0
        processors = (
            [_ThinkBudgetProcessor(think_budget, width, max_new_tokens)]
            if think_budget and think_budget.active
            else []
        )
        res = self.model.generate(
            input_ids=ids, attention_mask=mask, mm_token_type_ids=types, **mm,
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_p=None if greedy or sampling.top_p >= 1.0 else sampling.top_p,
            top_k=None if greedy or sampling.top_k <= 0 else sampling.top_k,
            max_new_tokens=max_new_tokens, min_new_tokens=min(sampling.min_new_tokens, max_new_tokens) or None,
            eos_token_id=self.end_ids, pad_token_id=self.pad_id,
            suppress_tokens=self.banned_ids,
            logits_processor=processors, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        return self._generations(res.sequences[:, width:], torch.stack(res.logits, dim=1), sampling,
                                 max_new_tokens, think_budget)  # fmt: skip

    def _generations(self, new, logits, sampling, max_new_tokens, think_budget) -> list[Generation]:
        """One :class:`Generation` per row of ``new`` ``[B, steps]`` (cut after the end-of-turn
        token) with ``log_softmax(logits / T)`` of each sampled token (``logits`` ``[B, steps,
        vocab]``, the model's, before any processing)."""
        new, logits = new.cpu(), logits.float().cpu()
        scale = 1.0 if sampling.temperature <= 0 else sampling.temperature
        logprobs = torch.log_softmax(logits / scale, dim=-1).gather(-1, new[..., None])[..., 0]
        out = []
        for row in range(len(new)):
            toks = new[row].tolist()
            stop = next((j for j, t in enumerate(toks) if t in self.end_ids), None)
            n = len(toks) if stop is None else stop + 1
            toks = toks[:n]
            forced = think_budget.forced(toks, max_new_tokens) if think_budget else [False] * n
            out.append(
                Generation(toks, logprobs[row, :n].tolist(), forced, "length" if stop is None else "stop")
            )
        return out

    def _generate_masked(self, requests, sampling, max_new_tokens, think_budget):
        """Generation under span-masked attention (``memory.eviction=mask``): one prefill of the
        whole context with the 4-D mask and the rows' rotary positions
        (:func:`~streamreason.rollout.attention.span_masked_inputs`), then one token per step
        from the KV cache, each new token hidden from every masked span (they were all evicted
        before this turn) and at the next text position. Sampling is ``generate``'s: the same
        logits processors in its order (min new tokens, suppressed ids, the think budget, then
        temperature, top-k, top-p), multinomial draws from torch's generator."""
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            MinNewTokensLengthLogitsProcessor,
            SuppressTokensLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        from streamreason.rollout.attention import ALWAYS, dense_mask, span_masked_inputs, visible_until

        self.model.eval()
        width, ids, types, mask, mm = self._left_padded(requests)
        device, b = ids.device, len(requests)
        until = torch.full((b, width + max_new_tokens), ALWAYS, dtype=torch.long)
        for row, r in enumerate(requests):
            n = len(r.prompt_ids)
            row_until = visible_until(n, r.masked_spans)
            row_until[row_until != ALWAYS] += width - n  # query positions are the padded columns
            until[row, width - n : width] = torch.from_numpy(row_until)
        until = until.to(device)
        greedy = sampling.temperature <= 0
        procs = LogitsProcessorList()
        if sampling.min_new_tokens:
            procs.append(MinNewTokensLengthLogitsProcessor(width, min(sampling.min_new_tokens, max_new_tokens),
                                                           self.end_ids, device))  # fmt: skip
        if self.banned_ids:
            procs.append(SuppressTokensLogitsProcessor(self.banned_ids, device))
        if think_budget and think_budget.active:
            procs.append(_ThinkBudgetProcessor(think_budget, width, max_new_tokens))
        if not greedy:
            procs.append(TemperatureLogitsWarper(float(sampling.temperature)))
            if sampling.top_k > 0:
                procs.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                procs.append(TopPLogitsWarper(sampling.top_p))
        inputs = span_masked_inputs(
            self.model, {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types, **mm},
            until[:, :width],
        )  # fmt: skip
        out = self.model(**inputs, use_cache=True)
        cache, pos = (
            out.past_key_values,
            inputs["position_ids"][:, :, -1:],
        )  # [3, B, 1]: the last prompt token's
        seq, valid = ids, mask.bool()
        steps, live = [], torch.ones(b, dtype=torch.bool, device=device)
        end_ids = torch.tensor(self.end_ids, device=device)
        logits = out.logits[:, -1]
        for t in range(max_new_tokens):
            steps.append(logits)
            scores = procs(seq, logits.float())
            nxt = scores.argmax(-1) if greedy else torch.multinomial(torch.softmax(scores, -1), 1)[:, 0]
            nxt = torch.where(live, nxt, torch.full_like(nxt, self.pad_id))
            seq = torch.cat([seq, nxt[:, None]], 1)
            live &= ~torch.isin(nxt, end_ids)
            if not live.any() or t + 1 == max_new_tokens:
                break
            valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=device)], 1)
            pos = pos + 1  # text continues from the largest position, one step on every axis
            step_mask = dense_mask(until[:, : seq.shape[1]], valid, q_len=1)
            out = self.model(input_ids=nxt[:, None], attention_mask=step_mask, position_ids=pos,
                             past_key_values=cache, use_cache=True)  # fmt: skip
            cache, logits = out.past_key_values, out.logits[:, -1]
        return self._generations(
            seq[:, width:], torch.stack(steps, 1), sampling, max_new_tokens, think_budget
        )
