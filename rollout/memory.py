"""Reasoning-compressed streaming memory: keep all text, window the video.

ThinkStream's RCSM (SEEDS.md): each turn's context holds the system prompt, every query at its
time, every past think trace and response with its chunk's time marker, and the video of the
last ``W`` chunks only; an older chunk keeps its time marker in place of its frames.

Options:

* ``evict_block`` (B): the video window moves in blocks of B chunks, so the prompt only grows
  for B turns at a time (a stable prefix for the engine's prefix cache, and one packed training
  row per block). The number of chunks with video is then between W and W + B - 1.
* ``keep_all_video``: no eviction (the uncompressed baseline).
* ``text_sink_tokens`` / ``text_recent_tokens`` (StreamingVLM, arXiv 2510.09608): cap the past
  assistant text to whole turns fitting the first ``sink`` tokens plus the last ``recent``
  tokens. Queries always stay, with their chunk's time marker; an evicted chunk with neither a
  query nor a kept reply leaves the context entirely, so the context is bounded in video length
  (without this, each of its markers, about 25 tokens, stays forever: 90k tokens at an hour).
  Re-evaluated only at block boundaries.

Between two block boundaries, prompt(t+1) = prompt(t) + response(t) + env tokens + user(t+1):
tests assert it, and :attr:`Prompt.block_start` tells which turns pack into one row.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamreason.errors import ConfigError
from streamreason.rollout.chat import VideoSegment


@dataclass
class MemoryConfig:
    """What the policy's context keeps (see the module docstring).

    Attributes:
        window_chunks: W, chunks whose video stays in the context (ThinkStream: 20).
        evict_block: B, chunks evicted at once (1 = slide every turn).
        keep_all_video: never evict video.
        text_sink_tokens: assistant-text tokens kept from the start (0 with recent 0 = no cap).
        text_recent_tokens: assistant-text tokens kept from the end.
    """

    window_chunks: int = 20
    evict_block: int = 1
    keep_all_video: bool = False
    text_sink_tokens: int = 0
    text_recent_tokens: int = 0

    def __post_init__(self):
        if self.window_chunks < 1:
            raise ConfigError(f"memory.window_chunks must be >= 1, got {self.window_chunks}")
        if self.evict_block < 1:
            raise ConfigError(f"memory.evict_block must be >= 1, got {self.evict_block}")
        if self.text_sink_tokens < 0 or self.text_recent_tokens < 0:
            raise ConfigError("memory.text_sink_tokens and memory.text_recent_tokens must be >= 0")

    @property
    def text_cap(self) -> bool:
        return self.text_sink_tokens > 0 or self.text_recent_tokens > 0

    def video_cutoff(self, turn: int) -> int:
        """First chunk whose video is kept at ``turn``: ``max(0, floor((t - W + 1) / B) * B)``."""
        if self.keep_all_video:
            return 0
        return max(0, (turn - self.window_chunks + 1) // self.evict_block * self.evict_block)

    def block_start(self, turn: int) -> int:
        """The turn at which the eviction block holding ``turn`` began (0 for the first block)."""
        if self.keep_all_video:
            return turn // self.evict_block * self.evict_block if self.text_cap else 0
        cut = self.video_cutoff(turn)
        return 0 if cut == 0 else cut + self.window_chunks - 1


@dataclass(frozen=True)
class MemoryStats:
    """Per-turn context figures (tokens).

    Attributes:
        context_tokens: prompt length.
        visual_tokens: video placeholder tokens in the prompt.
        shared_prefix_tokens: leading tokens identical to the previous turn's prompt (same ids
            and same pixels): what a prefix cache can reuse.
        video_chunks: chunks whose video is in the prompt.
    """

    context_tokens: int
    visual_tokens: int
    shared_prefix_tokens: int
    video_chunks: int


@dataclass
class Prompt:
    """The context of one turn.

    Attributes:
        ids: token ids ``[P]``.
        mm_token_type_ids: modality per token ``[P]`` (0 text, 1 image, 2 video).
        videos: the chunks' video segments in prompt order.
        video_chunks: their chunk indices.
        block_start: first turn of this turn's eviction block.
        stats: :class:`MemoryStats`.
    """

    ids: list[int]
    mm_token_type_ids: list[int]
    videos: list[VideoSegment]
    video_chunks: list[int]
    block_start: int
    stats: MemoryStats


@dataclass
class _Chunk:
    head: list[int]
    tail: list[int]
    video: VideoSegment
    has_query: bool = True
    reply: list[int] | None = None  # generated ids + env end-of-turn ids


class VisualWindowMemory:
    """One trajectory's memory.

    Call :meth:`add_chunk` when a chunk arrives, :meth:`prompt` for the turn's context, then
    :meth:`add_reply` with what the policy generated.

    Args:
        cfg: :class:`MemoryConfig`.
        system_ids: token ids of the system turn (always first).
    """

    def __init__(self, cfg: MemoryConfig, system_ids: list[int]):
        self.cfg = cfg
        self.system_ids = list(system_ids)
        self.chunks: list[_Chunk] = []
        self._prev_key: list[tuple] = []
        self._prev_ids: list[int] = []

    def add_chunk(
        self, head: list[int], video: VideoSegment, tail: list[int], has_query: bool = True
    ) -> None:
        """A new chunk arrived: its user turn is ``head + video + tail`` while the video is kept.

        ``has_query=False`` (no query asked in this chunk) lets a text cap drop the chunk's
        time marker once its video is evicted and its reply dropped.
        """
        if self.chunks and self.chunks[-1].reply is None:
            raise RuntimeError("add_reply() for the previous chunk must come before the next add_chunk()")
        self.chunks.append(_Chunk(list(head), list(tail), video, has_query))

    def add_reply(self, reply_ids: list[int]) -> None:
        """The current turn's assistant tokens: generated ids plus the env's end-of-turn ids."""
        self.chunks[-1].reply = list(reply_ids)

    def _kept_replies(self, turn: int) -> set[int]:
        """Turns whose assistant text stays (all unless a text cap is set)."""
        if not self.cfg.text_cap:
            return set(range(turn))
        start = self.cfg.block_start(turn)
        kept = set(range(start, turn))  # text of the current block stays in place
        for order, budget in ((range(start), self.cfg.text_sink_tokens),
                              (range(start - 1, -1, -1), self.cfg.text_recent_tokens)):  # fmt: skip
            used = 0
            for k in order:
                used += len(self.chunks[k].reply)
                if used > budget:
                    break
                kept.add(k)
        return kept

    def prompt(self) -> Prompt:
        """The context for the latest chunk's turn (see the module docstring)."""
        turn = len(self.chunks) - 1
        if turn < 0:
            raise RuntimeError("prompt() before any add_chunk()")
        cutoff = self.cfg.video_cutoff(turn)
        replies = self._kept_replies(turn)
        pieces: list[tuple[tuple, list[int], VideoSegment | None]] = [(("system",), self.system_ids, None)]
        for k, c in enumerate(self.chunks):
            if k >= cutoff:
                pieces.append((("head", k), c.head, None))
                pieces.append((("video", k), c.video.ids, c.video))
                pieces.append((("tail", k), c.tail, None))
            elif k in replies or c.has_query or not self.cfg.text_cap:
                # evicted: the time marker and queries stay, the frames go
                pieces.append((("marker", k), c.head + c.tail, None))
            if k < turn and k in replies:
                pieces.append((("reply", k), c.reply, None))
        ids: list[int] = []
        types: list[int] = []
        videos, video_chunks = [], []
        for key, piece_ids, video in pieces:
            ids.extend(piece_ids)
            if video is None:
                types.extend([0] * len(piece_ids))
            else:
                types.extend(video.mm_token_type_ids)
                videos.append(video)
                video_chunks.append(key[1])
        keys = [p[0] for p in pieces]
        shared = self._shared_prefix(keys, pieces, ids)
        self._prev_key, self._prev_ids = keys, ids
        stats = MemoryStats(len(ids), sum(v.visual_tokens for v in videos), shared, len(videos))
        return Prompt(ids, types, videos, video_chunks, self.cfg.block_start(turn), stats)

    def _shared_prefix(self, keys: list[tuple], pieces, ids: list[int]) -> int:
        """Tokens shared with the previous prompt: whole equal pieces, then a common text prefix."""
        n = 0
        for i, key in enumerate(keys):
            if i < len(self._prev_key) and self._prev_key[i] == key:
                n += len(pieces[i][1])
                continue
            if pieces[i][2] is None:  # text piece: count its common token prefix
                prev = self._prev_ids[n:]
                for a, b in zip(pieces[i][1], prev):
                    if a != b:
                        break
                    n += 1
            break
        return min(n, len(self._prev_ids))
