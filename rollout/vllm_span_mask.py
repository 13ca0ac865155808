"""A vLLM plugin: per-request span-masked attention (``memory.eviction=mask``) in vLLM's FlexAttention.

vLLM already threads per-request token ranges from request state into the attention mask for
multimodal prefix-LM models (``vllm/v1/worker/gpu_model_runner.py`` builds ``mm_req_doc_ranges``
into ``CommonAttentionMetadata``; ``vllm/v1/attention/backends/flex_attention.py`` turns them
into a ``mask_mod``). This plugin adds ThinkStream's eviction mask the same way, without a fork:

* a request carries its prompt's masked spans ``(start, end, from_position)`` in
  ``SamplingParams.extra_args[SPANS_KEY]`` (:class:`~streamreason.rollout.vllm_engine.VLLMEngine`);
* before each batch's attention metadata is built (``GPUModelRunner._build_attention_metadata``),
  the batch's :func:`~streamreason.rollout.attention.visible_until` rows are written into one
  persistent int32 buffer ``[max_num_seqs, max_model_len + 1]`` (a fixed address, so a captured
  CUDA graph reads each step's values);
* ``FlexAttentionMetadata.get_mask_mod`` returns vLLM's mask ``and`` ours: a key at logical
  position ``k`` of request ``r`` is visible to a query at logical position ``q`` iff
  ``q < until[r, k]`` (``torch.nn.attention.flex_attention.and_masks``).

It is active in a process only when :data:`ENV_FLAG` is set (the engine sets it before vLLM
starts, with ``attention_backend="FLEX_ATTENTION"``); then every batch gets the mask, with the
buffer at "always visible" for requests without spans, so that the mask is part of every
captured graph. vLLM loads the plugin in each of its processes through the
``vllm.general_plugins`` entry point (``pyproject.toml``); loading it twice is harmless.

Prefix caching stays on and exact: a token's keys and values depend only on its prefix and on
the memory settings that made the spans, which the engine puts in the request's ``cache_salt``.
"""

from __future__ import annotations

import os

import numpy as np
import torch

SPANS_KEY = "streamreason_masked_spans"
"""``SamplingParams.extra_args`` key of a request's ``[(start, end, from_position), ...]``."""
ENV_FLAG = "STREAMREASON_VLLM_SPAN_MASK"
"""Set to ``1`` in the environment before vLLM starts to turn the mask on in its processes."""
_VISIBLE = np.iinfo(np.int32).max


class _State:
    """Per process: the persistent buffer and each live request's row, on the GPU."""

    until: torch.Tensor | None = None
    rows: dict[str, torch.Tensor] = {}
    batch: tuple = ()  # the request order the buffer holds: a decode step with the same batch writes nothing


def _request_row(runner, req_id: str) -> torch.Tensor | None:
    """``visible_until`` of a request's prompt as an int32 GPU row (cached per request), or
    None for a request without spans."""
    from streamreason.rollout.attention import visible_until

    if req_id in _State.rows:
        return _State.rows[req_id]
    state = runner.requests.get(req_id)
    params = getattr(state, "sampling_params", None)
    spans = (params.extra_args or {}).get(SPANS_KEY) if params is not None else None
    row = None
    if spans:
        until = visible_until(len(state.prompt_token_ids), [tuple(s) for s in spans])
        row = torch.from_numpy(np.minimum(until, _VISIBLE).astype(np.int32)).to(_State.until.device)
    _State.rows[req_id] = row
    return row


def _fill(runner, num_reqs: int) -> None:
    """Write the batch's rows into the buffer, in the input batch's request order (the order of
    FlexAttention's ``doc_ids``), unless the buffer holds that batch already (decode steps of
    the same requests); forget finished requests."""
    if _State.until is None:
        _State.until = torch.full((runner.max_num_reqs, runner.max_model_len + 1), _VISIBLE,
                                  dtype=torch.int32, device=runner.device)  # fmt: skip
    batch = tuple(runner.input_batch.req_ids[:num_reqs])
    if batch == _State.batch:
        return
    _State.batch = batch
    live = set(runner.requests)
    for gone in [r for r in _State.rows if r not in live]:
        del _State.rows[gone]
    _State.until[:num_reqs].fill_(_VISIBLE)
    for i, req_id in enumerate(batch):
        row = _request_row(runner, req_id) if req_id is not None else None
        if row is not None:
            _State.until[i, : len(row)] = row


def _patch_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    build = GPUModelRunner._build_attention_metadata
    if getattr(build, "_streamreason", False):
        return

    def _build_attention_metadata(self, *args, **kwargs):
        num_reqs = kwargs.get("num_reqs", args[1] if len(args) > 1 else 0)
        _fill(self, num_reqs)
        return build(self, *args, **kwargs)

    _build_attention_metadata._streamreason = True
    GPUModelRunner._build_attention_metadata = _build_attention_metadata


def _patch_flex() -> None:
    from torch.nn.attention.flex_attention import and_masks
    from vllm.v1.attention.backends.flex_attention import FlexAttentionMetadata

    get = FlexAttentionMetadata.get_mask_mod
    if getattr(get, "_streamreason", False):
        return

    def get_mask_mod(self):
        mask_mod = get(self)
        until = _State.until
        if until is None or not self.uses_paged_kv or self.doc_ids is None:
            return mask_mod
        lookup, last = self.doc_ids, until.shape[1] - 1

        def span_mask_mod(b, h, q_idx, physical_kv_idx):
            _, logical_q, logical_kv = self._convert_physical_to_logical(lookup, q_idx, physical_kv_idx)
            return logical_q < until[lookup[q_idx], logical_kv.clamp(0, last)]

        return and_masks(mask_mod, span_mask_mod)

    get_mask_mod._streamreason = True
    FlexAttentionMetadata.get_mask_mod = get_mask_mod


def register() -> None:
    """The ``vllm.general_plugins`` entry point: patch vLLM's runner and FlexAttention metadata
    in this process when :data:`ENV_FLAG` is set; otherwise do nothing."""
    if os.environ.get(ENV_FLAG) != "1":
        return
    _patch_runner()
    _patch_flex()
