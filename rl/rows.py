"""Training rows: one packed causal row per eviction block of a trajectory.

Under ``memory.eviction=mask`` the context never loses a token, so a whole trajectory is one
block and one row: its last prompt and response, with the attention mask's spans
(:attr:`TrainRow.masked_spans`) hiding each evicted chunk's video from the turns after its
eviction, as at inference. The rest of this docstring holds for both.

Between two evictions the context only grows (prompt(t+1) = prompt(t) + response(t) + env
tokens + user(t+1), ``rollout/memory.py``), so the turns of one block are one causal sequence:
the last turn's prompt followed by its response. Every response of the block sits in it at
the offset where its turn's prompt ended, so the logits the learner computes at those positions
are exactly the ones the rollout sampled from (causal attention; position ids are recomputed
from the same ids, modality ids and grids). ``evict_block = 1`` gives one row per turn.

Arrays are indexed by token position ``i`` of ``input_ids``; ``loss_mask[i] = 1`` marks a token
the policy sampled (its log-prob comes from the logits at ``i - 1``), 0 on prompt, env and
think-budget-forced tokens (verl's ``response_mask`` convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from streamreason.rollout.attention import ALWAYS, visible_until
from streamreason.rollout.chat import VideoSegment, concat_videos
from streamreason.rollout.loop import Trajectory


@dataclass
class TrainRow:
    """One packed row.

    Attributes:
        input_ids: int64 ``[L]``.
        mm_token_type_ids: int64 ``[L]`` (0 text, 1 image, 2 video).
        videos: the chunks' video segments in row order (tensors shared with the trajectory).
        loss_mask: float32 ``[L]``, 1 on sampled response tokens.
        old_logprobs: float32 ``[L]``, rollout log-prob of token ``i`` (0 where masked).
        advantage: the trajectory's advantage (copied to all its rows).
        traj_index: index of the trajectory in the batch it came from.
        turns: ``(first, last)`` chunk indices packed in the row.
        decision: int64 ``[L]``, for SFT: class id (0 silent, 1 response, 2 standby) at the
            first token after the think span of each turn, -1 elsewhere.
        ref_logprobs: float32 ``[L]``, the reference model's log-probs (when a KL loss is on).
        masked_spans: ``(start, end, from_position)`` token spans hidden from the tokens at
            ``from_position`` on (``memory.eviction=mask``: the block's last prompt's spans,
            which hold every earlier turn's; :mod:`streamreason.rollout.attention`).
    """

    input_ids: np.ndarray
    mm_token_type_ids: np.ndarray
    videos: list[VideoSegment]
    loss_mask: np.ndarray
    old_logprobs: np.ndarray
    advantage: float = 0.0
    traj_index: int = 0
    turns: tuple[int, int] = (0, 0)
    decision: np.ndarray | None = field(default=None, repr=False)
    ref_logprobs: np.ndarray | None = field(default=None, repr=False)
    masked_spans: list[tuple[int, int, int]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


def noop_row(row: TrainRow) -> TrainRow:
    """A copy of ``row`` that trains nothing: loss mask, decision labels and reference log-probs
    zeroed. A rank with fewer rows than the others runs it so that every rank takes part in
    FSDP's collectives the same number of times; it adds nothing to the loss or gradient."""
    return TrainRow(row.input_ids, row.mm_token_type_ids, row.videos, np.zeros_like(row.loss_mask),
                    row.old_logprobs, advantage=row.advantage, traj_index=row.traj_index, turns=row.turns,
                    decision=None if row.decision is None else np.full_like(row.decision, -1),
                    ref_logprobs=np.zeros_like(row.old_logprobs), masked_spans=row.masked_spans)  # fmt: skip


def build_rows(trajectories: list[Trajectory], advantages: list[float] | None = None) -> list[TrainRow]:
    """Pack each trajectory's turns into one row per eviction block.

    Args:
        trajectories: rollouts (``run_rollouts`` output).
        advantages: one per trajectory (None: 0, e.g. for SFT).

    Returns:
        Rows in trajectory order, blocks in turn order.

    Raises:
        ValueError: a turn's prompt does not extend its block's packed sequence (the memory
            broke its stable-prefix contract).
    """
    rows = []
    for i, traj in enumerate(trajectories):
        adv = 0.0 if advantages is None else float(advantages[i])
        blocks: dict[int, list[int]] = {}
        for t, turn in enumerate(traj.turns):
            blocks.setdefault(turn.block_start, []).append(t)
        for turn_ids in blocks.values():
            last = traj.turns[turn_ids[-1]]
            ids = np.concatenate([last.prompt_ids, last.response_ids]).astype(np.int64)
            types = np.concatenate([last.mm_token_type_ids, np.zeros(len(last.response_ids), np.int8)])
            mask = np.zeros(len(ids), np.float32)
            old = np.zeros(len(ids), np.float32)
            for t in turn_ids:
                turn = traj.turns[t]
                start, end = len(turn.prompt_ids), len(turn.prompt_ids) + len(turn.response_ids)
                if not np.array_equal(ids[:start], turn.prompt_ids) or not np.array_equal(
                    ids[start:end], turn.response_ids
                ):
                    raise ValueError(f"row {traj.row.id!r}: turn {t} does not extend its eviction block")
                mask[start:end] = turn.response_mask
                old[start:end] = turn.logprobs
            rows.append(
                TrainRow(
                    input_ids=ids,
                    mm_token_type_ids=types.astype(np.int64),
                    videos=[traj.videos[k] for k in last.video_chunks],
                    loss_mask=mask,
                    old_logprobs=old,
                    advantage=adv,
                    traj_index=i,
                    turns=(traj.turns[turn_ids[0]].chunk_index, last.chunk_index),
                    masked_spans=list(last.masked_spans),
                )
            )
    return rows


def collate(rows: list[TrainRow], pad_id: int, pixels: bool = True) -> dict[str, torch.Tensor]:
    """A right-padded micro-batch.

    Args:
        rows: the micro-batch's rows.
        pad_id: padding token id.
        pixels: include the videos' pixel tensors (False: only their grids and timing, for a
            forward that takes precomputed video features, ``learner.VisionCache``).

    Returns:
        Model inputs (``input_ids``, ``attention_mask``, ``mm_token_type_ids`` int64
        ``[B, L]`` and the videos' tensors concatenated in row order) plus, shifted so that
        column ``j`` is the target token ``j + 1``: ``targets`` int64, ``loss_mask`` and
        ``old_logprobs`` float32, ``advantages`` float32, all ``[B, L - 1]``, and
        ``decision`` int64 ``[B, L - 1]`` when the rows carry decision labels, and
        ``visible_until`` int64 ``[B, L]`` when a row has masked spans
        (:func:`~streamreason.rollout.attention.visible_until`; the learner turns it into the
        4-D span mask).
    """
    width = max(len(r) for r in rows)
    b = len(rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros(b, width, dtype=torch.long)
    types = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width)
    old = torch.zeros(b, width)
    decision = torch.full((b, width), -1, dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(r)
        ids[j, :n] = torch.from_numpy(r.input_ids)
        attn[j, :n] = 1
        types[j, :n] = torch.from_numpy(r.mm_token_type_ids)
        mask[j, :n] = torch.from_numpy(r.loss_mask)
        old[j, :n] = torch.from_numpy(r.old_logprobs)
        if r.decision is not None:
            decision[j, :n] = torch.from_numpy(r.decision)
    batch = {"input_ids": ids, "attention_mask": attn, "mm_token_type_ids": types}
    if any(r.masked_spans for r in rows):  # span-masked attention (memory.eviction=mask)
        until = torch.full((b, width), ALWAYS, dtype=torch.long)
        for j, r in enumerate(rows):
            until[j, : len(r)] = torch.from_numpy(visible_until(len(r), r.masked_spans))
        batch["visible_until"] = until
    videos = [v for r in rows for v in r.videos]
    if pixels:
        batch.update(concat_videos(videos))
    elif videos:  # the small per-video tensors only: video_grid_thw, second_per_grid_ts
        batch.update(
            {k: torch.cat([v.tensors[k] for v in videos]) for k in videos[0].tensors if "pixel" not in k}
        )
    adv = torch.tensor([r.advantage for r in rows], dtype=torch.float32)[:, None].expand(b, width - 1)
    batch.update(
        targets=ids[:, 1:],
        loss_mask=mask[:, 1:],
        old_logprobs=old[:, 1:],
        advantages=adv.contiguous(),
        decision=decision[:, 1:],
    )
    return batch
