"""Token-level ChatML for streaming turns.

Prompts are built as token ids throughout (DESIGN.md): each piece of a turn is tokenized once,
generated tokens are appended as generated, and nothing is decoded and re-tokenized. A turn
for chunk ``k`` is::

    <|im_start|>user\\n[k*cs s-(k+1)*cs s]<|vision_start|><|video_pad|>*n<|vision_end|>
    \\nQuestion (asked at t s): ...<|im_end|>\\n<|im_start|>assistant\\n
    <think>...</think><response>...<|im_end|>\\n

The video placeholder is expanded by the model's own processor, so Qwen2-VL, Qwen2.5-VL and
Qwen3-VL (which interleaves frame timestamps) all get exactly their native layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from streamreason.errors import ConfigError
from streamreason.rollout.protocol import Protocol
from streamreason.types import Query

# Processor outputs that are per-token or text-only; every other tensor is a multimodal input
# that concatenates along dim 0 across videos (pixel_values_videos, video_grid_thw, ...).
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


@dataclass
class VideoSegment:
    """One chunk's video as the model consumes it.

    Attributes:
        ids: placeholder token ids, ``<|vision_start|>`` ... ``<|vision_end|>`` (int, length n).
        mm_token_type_ids: per-token modality (0 text, 1 image, 2 video), same length as ids.
        tensors: the processor's multimodal tensors for this one video, e.g.
            ``pixel_values_videos`` float32 ``[patches, C*T*P*P]``, ``video_grid_thw`` int64
            ``[1, 3]``, ``second_per_grid_ts`` float32 ``[1]`` (Qwen2.5-VL).
        frames: the raw uint8 frames ``[F, H, W, 3]`` (engines that run their own processor,
            such as vLLM, take these).
        fps: frames per second of ``frames``.
    """

    ids: list[int]
    mm_token_type_ids: list[int]
    tensors: dict[str, torch.Tensor] = field(repr=False)
    frames: np.ndarray | None = field(default=None, repr=False)
    fps: float = 0.0
    _uid: str | None = field(default=None, init=False, repr=False)

    @property
    def uid(self) -> str:
        """A content hash of the frames, their shape and fps (BLAKE2b, hex), computed once.

        Engines that cache processed videos by content (vLLM's ``multi_modal_uuids``) take it
        instead of hashing every chunk of every request again.
        """
        if self._uid is None:
            import hashlib

            h = hashlib.blake2b(digest_size=16)
            h.update(f"{self.frames.shape}|{self.frames.dtype}|{self.fps!r}".encode())
            h.update(np.ascontiguousarray(self.frames).data)
            self._uid = h.hexdigest()
        return self._uid

    def metadata(self) -> dict:
        """The frames' metadata as transformers' ``VideoMetadata`` fields (vLLM and verl take it
        beside the frames, so their processors see the same fps as :meth:`ChatEncoder.video`)."""
        f, h, w = self.frames.shape[:3]
        return {"total_num_frames": f, "fps": self.fps, "frames_indices": list(range(f)), "height": h,
                "width": w, "duration": f / self.fps}  # fmt: skip

    @property
    def visual_tokens(self) -> int:
        """Video placeholder tokens (what the LM attends to), markers excluded."""
        return sum(1 for t in self.mm_token_type_ids if t != 0)


def find_subsequence(seq, sub, start: int = 0) -> int:
    """Index of the first occurrence of token ids ``sub`` in ``seq`` at or after ``start``; -1 if none."""
    seq, sub = list(seq), list(sub)
    n = len(sub)
    return next((i for i in range(start, len(seq) - n + 1) if seq[i : i + n] == sub), -1)


def concat_videos(videos: list[VideoSegment]) -> dict[str, torch.Tensor]:
    """The multimodal keyword arguments of a prompt holding ``videos`` in order ({} if none)."""
    if not videos:
        return {}
    return {k: torch.cat([v.tensors[k] for v in videos], dim=0) for k in videos[0].tensors}


class ChatEncoder:
    """Turns observations and generated tokens into token-id pieces for one model.

    Args:
        processor: the model's ``AutoProcessor`` (tokenizer + video processor).
        protocol: the turn protocol (system prompt, time markers, query text).
    """

    def __init__(self, processor, protocol: Protocol):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.protocol = protocol
        self.vision_start_id = self.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        self.vision_end_id = self.tokenizer.convert_tokens_to_ids("<|vision_end|>")
        self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        vp = processor.video_processor
        self.frame_factor = vp.patch_size * vp.merge_size
        self.temporal_patch_size = vp.temporal_patch_size
        self.system_ids = self.text(f"<|im_start|>system\n{protocol.system_prompt}<|im_end|>\n")
        self.newline_ids = self.text("\n")
        self.close_ids = self.text("<|im_end|>\n")

    def text(self, s: str) -> list[int]:
        """Token ids of ``s`` (special tokens in ``s`` map to their ids; nothing added)."""
        return self.tokenizer.encode(s, add_special_tokens=False)

    def think_ids(self) -> tuple[list[int], list[int]]:
        """Token ids of the protocol's think open and close tags (for the think budget)."""
        return self.text(self.protocol.think_open), self.text(self.protocol.think_close)

    def video(self, frames: np.ndarray, fps: float) -> VideoSegment:
        """Encode one chunk's frames.

        Args:
            frames: uint8 ``[F, H, W, 3]``; H and W multiples of patch_size * merge_size (the
                env's ``resize_factor``), F a multiple of the temporal patch size.
            fps: frames per second the frames were sampled at (sets Qwen2.5-VL's temporal
                position spacing and Qwen3-VL's timestamps).

        Raises:
            ConfigError: frame count or size that the vision tower cannot take as is.
        """
        f, h, w = frames.shape[:3]
        if h % self.frame_factor or w % self.frame_factor:
            raise ConfigError(
                f"frames are {h}x{w} but this model needs multiples of {self.frame_factor}: "
                f"set env.resize_factor={self.frame_factor}"
            )
        if f % self.temporal_patch_size:
            raise ConfigError(
                f"{f} frames per chunk but this model's temporal patch is {self.temporal_patch_size}: "
                f"set env.frames_per_chunk to a multiple of {self.temporal_patch_size}"
            )
        from transformers.video_utils import VideoMetadata

        frames = np.array(frames)  # a writable copy (Ray hands out read-only views)
        meta = VideoMetadata(total_num_frames=f, fps=fps, frames_indices=list(range(f)), height=h, width=w)
        out = self.processor(
            text=[self.processor.video_token], videos=[frames], video_metadata=[meta],
            do_resize=False, return_tensors="pt",
        )  # fmt: skip
        ids = out["input_ids"][0].tolist()
        types = out["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in out else self._types(ids)
        if (
            self.vision_start_id not in ids
        ):  # Qwen2/2.5-VL expand the pad only; Qwen3-VL adds per-frame markers
            ids = [self.vision_start_id, *ids, self.vision_end_id]
            types = [0, *types, 0]
        tensors = {k: v for k, v in out.items() if k not in _TOKEN_KEYS and isinstance(v, torch.Tensor)}
        return VideoSegment(ids, types, tensors, frames=frames, fps=float(fps))

    def _types(self, ids: list[int]) -> list[int]:
        video_id = self.tokenizer.convert_tokens_to_ids(self.processor.video_token)
        return [2 if t == video_id else 0 for t in ids]

    def user_turn(self, start_s: float, end_s: float, queries: list[Query]) -> tuple[list[int], list[int]]:
        """``(head_ids, tail_ids)`` of a chunk's user turn; its video (if kept) goes between."""
        head = self.text(f"<|im_start|>user\n{self.protocol.chunk_header(start_s, end_s)}")
        tail = "".join(self.protocol.query_text(q) for q in queries)
        return head, self.text(f"{tail}<|im_end|>\n<|im_start|>assistant\n")

    def end_of_turn(self, ended: bool) -> list[int]:
        """Env tokens after a generated turn: ``\\n`` if it ended itself, else ``<|im_end|>\\n``."""
        return self.newline_ids if ended else self.close_ids
