"""Span-masked causal attention: ``eviction=mask``'s context, one rule for every engine and the learner.

Under ``rollout.memory.eviction=mask`` (ThinkStream's RCSM, :mod:`streamreason.rollout.memory`) a
trajectory's context only grows. When a chunk is evicted its video stays in the sequence, at
its positions, but the tokens of every later turn must not attend to it, while the tokens
computed before the eviction keep what they saw. The memory states this as masked spans
``(start, end, from_position)``: key tokens ``start .. end - 1`` are hidden from query tokens at
``from_position`` or later. Everything else is causal.

The spans of a sequence collapse into one integer per key token, :func:`visible_until`: key
``k`` is visible to query ``q`` iff ``k <= q < until[k]``. Since a token's visibility depends
only on tokens before it, each token's keys and values depend only on its prefix (and on the
memory settings that made the spans): a prefix cache stays exact.

:func:`dense_mask` turns it into the boolean ``[B, 1, Q, K]`` mask that Hugging Face models
take as-is (a 4-D ``attention_mask`` skips their own mask building) for SDPA and eager
attention; FlexAttention takes the same rule as a ``mask_mod``.

Example:
    >>> visible_until(6, [(1, 3, 4)]).tolist()  # tokens 1-2 hidden from token 4 on
    [9223372036854775807, 4, 4, 9223372036854775807, 9223372036854775807, 9223372036854775807]
    >>> dense_mask(torch.from_numpy(visible_until(6, [(1, 3, 4)]))[None])[0, 0, 5].tolist()
    [True, False, False, True, True, True]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

ALWAYS = np.iinfo(np.int64).max
"""``visible_until`` of a key no query is masked from."""


def visible_until(length: int, spans: Iterable[tuple[int, int, int]]) -> np.ndarray:
    """Per key token of a ``length``-token sequence, the first query position it is hidden from.

    Args:
        length: tokens in the sequence.
        spans: ``(start, end, from_position)`` token indices (``Prompt.masked_spans``).

    Returns:
        int64 ``[length]``: ``from_position`` inside a span (the smallest, where spans overlap),
        :data:`ALWAYS` elsewhere.

    Raises:
        ValueError: a span is empty, out of range, or hides a token from queries before it ends
            (``from_position < end``: the span's own tokens would lose their past).
    """
    until = np.full(length, ALWAYS, dtype=np.int64)
    for start, end, frm in spans:
        if not 0 <= start < end <= length or frm < end:
            raise ValueError(
                f"masked span ({start}, {end}, from {frm}) does not fit a {length}-token sequence"
            )
        until[start:end] = np.minimum(until[start:end], frm)
    return until


def dense_mask(
    until: torch.Tensor, valid: torch.Tensor | None = None, q_len: int | None = None
) -> torch.Tensor:
    """Boolean attention mask ``[B, 1, Q, K]`` (True: attend) of span-masked causal attention.

    Args:
        until: int64 ``[B, K]``, :func:`visible_until` of each row laid out in the batch's
            columns (padding columns: any value, they are hidden through ``valid``).
        valid: bool ``[B, K]``, False on padding (default: all valid).
        q_len: the queries are the last ``q_len`` key positions (a decoding step: 1); default K.

    Returns:
        ``allowed[b, 0, i, k] = valid[b, k] and k <= q and q < until[b, k]`` with ``q = K - Q + i``,
        and always True at ``k == q`` so that a padding query attends to something (its output
        is never used; a row with no key would be NaN).
    """
    b, k_len = until.shape
    q_len = k_len if q_len is None else q_len
    q = torch.arange(k_len - q_len, k_len, device=until.device)[:, None]
    k = torch.arange(k_len, device=until.device)[None, :]
    allowed = (k <= q)[None] & (q[None] < until[:, None, :])
    if valid is not None:
        allowed &= valid[:, None, :]
    return (allowed | (k == q)[None])[:, None]


def _base(model):
    """The ``...ForConditionalGeneration`` under a peft wrapper (LoRA) or FSDP's module."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def mrope_positions(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The multimodal rotary positions ``[3, B, L]`` of a batch, as the model computes them
    from its 2-D padding mask (``get_rope_index`` of Qwen2-VL, Qwen2.5-VL and Qwen3-VL): over
    the whole sequence, never rebased, so a row holding a trajectory's whole history gets the
    positions every turn had at inference.

    Args:
        model: the policy (``...ForConditionalGeneration``, LoRA-wrapped or not).
        inputs: ``input_ids``, ``attention_mask`` (2-D, 1 on tokens), ``mm_token_type_ids`` and
            the videos' ``video_grid_thw`` / ``second_per_grid_ts`` when present.
    """
    keys = ("video_grid_thw", "second_per_grid_ts", "image_grid_thw")
    extra = {k: inputs[k] for k in keys if inputs.get(k) is not None}
    pos, _ = _base(model).model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], attention_mask=inputs["attention_mask"], **extra
    )
    return pos


def span_masked_inputs(
    model, inputs: dict[str, torch.Tensor], until: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``inputs`` for one forward of span-masked causal attention: ``position_ids`` from
    :func:`mrope_positions` and the 2-D ``attention_mask`` replaced by :func:`dense_mask`.

    Args:
        model: the policy.
        inputs: model inputs with a 2-D ``attention_mask`` ``[B, L]``.
        until: int64 ``[B, L]``, :func:`visible_until` in the batch's columns.

    Raises:
        ValueError: the model runs an attention that takes no arbitrary mask
            (``flash_attention_2``); load it with ``sdpa`` or ``eager``.
    """
    impl = _base(model).config._attn_implementation
    if impl not in ("sdpa", "eager"):
        raise ValueError(
            f"span-masked attention (memory.eviction=mask) needs sdpa or eager attention, not {impl!r}"
        )
    out = dict(inputs)
    out["position_ids"] = mrope_positions(model, inputs)
    mask = dense_mask(until.to(inputs["attention_mask"].device), inputs["attention_mask"].bool())
    if impl == "eager":  # eager adds the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    out["attention_mask"] = mask
    return out
