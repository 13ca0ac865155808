"""Memory policies: what a trajectory's context holds at each turn, and their registry.

A memory policy is a :class:`Memory` subclass registered under a name; ``rollout.memory.name``
picks one, and :class:`MemoryConfig` holds the settings of all of them (a policy reads the ones
it uses). The :class:`~streamreason.rollout.loop.TrajectoryRecorder` drives one per trajectory,
so the lockstep loop and the verl agent loop share it.

The default, ``visual_window`` (:class:`VisualWindowMemory`), is ThinkStream's RCSM
(reasoning-compressed streaming memory): keep all text, window the video. Each turn's context
holds the system prompt, every query at its time, every past think trace and response with its
chunk's time marker, and the video of the last ``W`` chunks only; an older chunk keeps its time
marker in place of its frames. An eviction rewrites the context: the evicted frames leave the
token sequence and the tokens after them follow directly.

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

Adding a memory policy is one new module plus a registration::

    # rollout/my_memory.py
    from streamreason.rollout.memory import Memory, Prompt, register_memory

    @register_memory("my_memory")
    class MyMemory(Memory):
        def add_chunk(self, head, video, tail, has_query=True): ...
        def prompt(self) -> Prompt: ...
        def add_reply(self, reply_ids): ...

        @classmethod
        def video_cutoff(cls, cfg, turn): ...  # block_start, max_videos: when not the defaults

and its line in ``_BUILTIN_MODULES`` below (``"my_memory": "streamreason.rollout.my_memory"``),
so that a recipe naming it imports it; ``rollout.memory.name=my_memory`` selects it. A policy
registered outside the package (a script, a test) needs only its module imported before the
config is built. ``tests/rollout/test_memory_registry.py`` is the test template: a toy policy
that keeps only the latest chunk's video, run through
:func:`~streamreason.rollout.loop.run_rollouts`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from streamreason.errors import ConfigError
from streamreason.registry import Registry
from streamreason.rollout.chat import VideoSegment

EVICTIONS = ("rewrite", "mask")
"""``rollout.memory.eviction`` values (:class:`MemoryConfig`)."""


@dataclass
class MemoryConfig:
    """What the policy's context keeps (see the module docstring).

    Attributes:
        name: the registered memory policy (:func:`register_memory`); ``visual_window``.
        window_chunks: W, chunks whose video stays in the context (ThinkStream: 20).
        evict_block: B, chunks evicted at once (1 = slide every turn).
        keep_all_video: never evict video.
        text_sink_tokens: assistant-text tokens kept from the start (0 with recent 0 = no cap).
        text_recent_tokens: assistant-text tokens kept from the end.
        eviction: how an evicted chunk's video leaves the context. ``rewrite``: its tokens leave
            the sequence and the later tokens are re-encoded with contiguous positions (one
            training row per eviction block; the StreamingVLM-style text cap needs it).
            ``mask`` (ThinkStream's RCSM): the sequence only grows and positions are never
            rebased; the video stays, hidden by the attention mask from every token of the turns
            after its eviction (:attr:`Prompt.masked_spans`), while every token computed before
            keeps what it saw. Each turn then encodes only its new chunk and reply, and a whole
            trajectory is one training row.

    :meth:`video_cutoff`, :meth:`block_start` and :meth:`max_videos` are the named policy's
    rules (:class:`Memory`), for the code that needs them without a trajectory.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered ones), or a
            number is out of range.
    """

    name: str = "visual_window"
    window_chunks: int = 20
    evict_block: int = 1
    keep_all_video: bool = False
    text_sink_tokens: int = 0
    text_recent_tokens: int = 0
    eviction: str = "rewrite"

    def __post_init__(self):
        get_memory(self.name)
        if self.eviction not in EVICTIONS:
            raise ConfigError(f"memory.eviction must be one of {EVICTIONS}, got {self.eviction!r}")
        if self.eviction == "mask" and self.text_cap:
            raise ConfigError(
                "memory.eviction=mask keeps every token in the context; the text cap "
                "(memory.text_sink_tokens / text_recent_tokens) needs memory.eviction=rewrite"
            )
        if self.window_chunks < 1:
            raise ConfigError(f"memory.window_chunks must be >= 1, got {self.window_chunks}")
        if self.evict_block < 1:
            raise ConfigError(f"memory.evict_block must be >= 1, got {self.evict_block}")
        if self.text_sink_tokens < 0 or self.text_recent_tokens < 0:
            raise ConfigError("memory.text_sink_tokens and memory.text_recent_tokens must be >= 0")

    @property
    def policy(self) -> type[Memory]:
        """The :class:`Memory` subclass registered as :attr:`name`."""
        return get_memory(self.name)

    @property
    def text_cap(self) -> bool:
        return self.text_sink_tokens > 0 or self.text_recent_tokens > 0

    def video_cutoff(self, turn: int) -> int:
        """First chunk whose video is kept at ``turn`` (:meth:`Memory.video_cutoff`)."""
        return self.policy.video_cutoff(self, turn)

    def block_start(self, turn: int) -> int:
        """The first turn of the packing block holding ``turn`` (:meth:`Memory.block_start`)."""
        return self.policy.block_start(self, turn)

    @property
    def cache_salt(self) -> str | None:
        """What a prefix cache must key on beside the tokens: under ``eviction=mask`` a prefix's
        keys and values depend on the masks, which the policy and W, B decide; None otherwise."""
        if self.eviction != "mask":
            return None
        return f"{self.name}:mask:W{self.window_chunks}:B{self.evict_block}:all{int(self.keep_all_video)}"

    def max_videos(self, max_chunks: int) -> int:
        """Most chunk videos one prompt holds in streams of at most ``max_chunks`` chunks (the
        engine's per-prompt video limit; :meth:`Memory.max_videos`)."""
        return self.policy.max_videos(self, max_chunks)


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
        masked_spans: ``(start, end, from_position)`` token index triples: the tokens
            ``start .. end - 1`` (an evicted chunk's video) are hidden from every token at
            ``from_position`` or later (the first token of the turn that evicted it); empty
            unless ``eviction=mask``. Attention is causal otherwise
            (:func:`~streamreason.rollout.attention.visible_until`).
    """

    ids: list[int]
    mm_token_type_ids: list[int]
    videos: list[VideoSegment]
    video_chunks: list[int]
    block_start: int
    stats: MemoryStats
    masked_spans: list[tuple[int, int, int]] = field(default_factory=list)


class Memory(ABC):
    """A memory policy: one trajectory's context, turn by turn.

    Per turn the recorder calls :meth:`add_chunk` when the chunk arrives, :meth:`prompt` for the
    context to generate from, then :meth:`add_reply` with what was generated. Prompts are token
    ids throughout: generated tokens go in as generated, never decoded and re-tokenized.

    The class also states, for a :class:`MemoryConfig`, the rules that other code reads without
    a trajectory: :meth:`video_cutoff`, :meth:`block_start` (which turns pack into one training
    row; default: each turn its own row) and :meth:`max_videos` (the engine's per-prompt video
    limit; default: every chunk). Its prompts agree with them: ``Prompt.block_start ==
    block_start(cfg, turn)``, the videos of chunks ``video_cutoff(cfg, turn) .. turn``.

    The interface does not assume that eviction removes tokens: a policy under which evicted
    video stays in the context, hidden from later turns by the attention mask, keeps every
    chunk's video in its prompts (``max_videos``: every chunk) and one block per trajectory.

    Args:
        cfg: :class:`MemoryConfig`.
        system_ids: token ids of the system turn (always first).
    """

    def __init__(self, cfg: MemoryConfig, system_ids: list[int]):
        self.cfg = cfg
        self.system_ids = list(system_ids)

    @abstractmethod
    def add_chunk(
        self, head: list[int], video: VideoSegment, tail: list[int], has_query: bool = True
    ) -> None:
        """A new chunk arrived; its user turn is ``head + video.ids + tail`` (token ids; ``head``
        holds the chunk's time marker and the queries asked in it, ``has_query`` says whether
        there are any)."""

    @abstractmethod
    def prompt(self) -> Prompt:
        """The context of the latest chunk's turn (after its :meth:`add_chunk`)."""

    @abstractmethod
    def add_reply(self, reply_ids: list[int]) -> None:
        """The latest turn's assistant tokens: the generated ids (end-of-turn token included
        when generated), then the env's end-of-turn ids."""

    @classmethod
    @abstractmethod
    def video_cutoff(cls, cfg: MemoryConfig, turn: int) -> int:
        """First chunk whose video the prompt of ``turn`` (0-based) shows: it shows chunks
        ``cutoff .. turn``."""

    @classmethod
    def block_start(cls, cfg: MemoryConfig, turn: int) -> int:
        """The first turn of the packing block holding ``turn``. Turns of one block pack into one
        training row, so within a block the prompt of turn ``t + 1`` extends the prompt of ``t``
        plus its reply and env tokens. Default: ``turn`` (every turn its own row)."""
        return turn

    @classmethod
    def max_videos(cls, cfg: MemoryConfig, max_chunks: int) -> int:
        """Most chunk videos one prompt holds when a stream has at most ``max_chunks`` chunks.
        Default: ``max_chunks`` (every chunk)."""
        return max_chunks


_BUILTIN_MODULES: dict[str, str] = {"vst": "streamreason.rollout.vst"}
"""Name -> module of the built-in policies defined in other modules, imported on first lookup."""
_MEMORIES: Registry[type[Memory]] = Registry(
    "memory policy", config_key="rollout.memory.name", builtin_modules=_BUILTIN_MODULES
)


def register_memory(name: str):
    """Class decorator registering a :class:`Memory` subclass under ``name``.

    Raises:
        ValueError: ``name`` is taken by another class.
    """

    def wrap(cls: type[Memory]) -> type[Memory]:
        return _MEMORIES.register(name, cls)

    return wrap


def get_memory(name: str) -> type[Memory]:
    """The memory policy registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    return _MEMORIES.get(name)


def make_memory(cfg: MemoryConfig, system_ids: list[int]) -> Memory:
    """A new memory of the policy ``cfg.name``, for one trajectory."""
    return get_memory(cfg.name)(cfg, system_ids)


@dataclass
class _Chunk:
    head: list[int]
    tail: list[int]
    video: VideoSegment
    has_query: bool = True
    reply: list[int] | None = None  # generated ids + env end-of-turn ids


@register_memory("visual_window")
class VisualWindowMemory(Memory):
    """Keep all text, window the video (ThinkStream's RCSM; see the module docstring).

    Args:
        cfg: :class:`MemoryConfig` (``window_chunks``, ``evict_block``, ``keep_all_video``,
            ``text_sink_tokens``, ``text_recent_tokens``).
        system_ids: token ids of the system turn (always first).
    """

    def __init__(self, cfg: MemoryConfig, system_ids: list[int]):
        super().__init__(cfg, system_ids)
        self.chunks: list[_Chunk] = []
        self._prev_key: list[tuple] = []
        self._prev_ids: list[int] = []

    @classmethod
    def video_cutoff(cls, cfg: MemoryConfig, turn: int) -> int:
        """``max(0, floor((t - W + 1) / B) * B)``; 0 with ``keep_all_video``."""
        if cfg.keep_all_video:
            return 0
        return max(0, (turn - cfg.window_chunks + 1) // cfg.evict_block * cfg.evict_block)

    @classmethod
    def block_start(cls, cfg: MemoryConfig, turn: int) -> int:
        """The turn at which ``turn``'s eviction block began (0 for the first block); with
        ``keep_all_video``, blocks of B turns under a text cap, else one block; under
        ``eviction=mask`` one block (the context only grows)."""
        if cfg.eviction == "mask":
            return 0
        if cfg.keep_all_video:
            return turn // cfg.evict_block * cfg.evict_block if cfg.text_cap else 0
        cut = cls.video_cutoff(cfg, turn)
        return 0 if cut == 0 else cut + cfg.window_chunks - 1

    @classmethod
    def max_videos(cls, cfg: MemoryConfig, max_chunks: int) -> int:
        """``W + B - 1``, or ``max_chunks`` with ``keep_all_video`` or ``eviction=mask`` (evicted
        video stays in the sequence, masked)."""
        if cfg.keep_all_video or cfg.eviction == "mask":
            return max_chunks
        return cfg.window_chunks + cfg.evict_block - 1

    @classmethod
    def evicting_turn(cls, cfg: MemoryConfig, chunk: int) -> int:
        """The turn whose context first lacks ``chunk``'s video: the first ``t`` with
        ``video_cutoff(t) > chunk``, ``ceil((chunk + 1) / B) * B + W - 1`` (never with
        ``keep_all_video``: a turn past any stream)."""
        if cfg.keep_all_video:
            return 2**62
        b = cfg.evict_block
        return -(-(chunk + 1) // b) * b + cfg.window_chunks - 1

    def add_chunk(
        self, head: list[int], video: VideoSegment, tail: list[int], has_query: bool = True
    ) -> None:
        """A new chunk arrived: its user turn is ``head + video + tail`` while the video is kept.

        ``has_query=False`` (no query asked in this chunk) lets a text cap drop the chunk's
        time marker once its video is evicted and its reply dropped.

        Raises:
            RuntimeError: the previous chunk has no reply yet.
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
        start = self.block_start(self.cfg, turn)
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
        cutoff = self.video_cutoff(self.cfg, turn)
        masked = self.cfg.eviction == "mask"
        replies = set(range(turn)) if masked else self._kept_replies(turn)
        pieces: list[tuple[tuple, list[int], VideoSegment | None]] = [(("system",), self.system_ids, None)]
        for k, c in enumerate(self.chunks):
            if k >= cutoff or masked:
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
        spans = self._masked_spans(pieces, cutoff) if masked else []
        visible = [v for k, v in zip(video_chunks, videos) if k >= cutoff]
        stats = MemoryStats(len(ids), sum(v.visual_tokens for v in visible), shared, len(visible))
        return Prompt(ids, types, videos, video_chunks, self.block_start(self.cfg, turn), stats, spans)

    def _masked_spans(self, pieces, cutoff: int) -> list[tuple[int, int, int]]:
        """``(start, end, from_position)`` of each evicted chunk's video under ``eviction=mask``:
        hidden from the first token of its :meth:`evicting_turn` on."""
        at: dict[tuple, tuple[int, int]] = {}
        pos = 0
        for key, piece_ids, _ in pieces:
            at[key] = (pos, pos + len(piece_ids))
            pos += len(piece_ids)
        spans = []
        for k in range(cutoff):
            start, end = at[("video", k)]
            spans.append((start, end, at[("head", self.evicting_turn(self.cfg, k))][0]))
        return spans

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
