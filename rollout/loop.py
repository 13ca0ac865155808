"""The watch-think-speak rollout loop: G trajectories per row through env, memory and engine.

All trajectories of a batch advance in lockstep, one chunk per turn: every active trajectory's
memory builds its context, the engine generates one turn for all of them in one batch, the
protocol parses each turn, and the env pool steps every env with its action. A row whose video
fails is dropped with its error (counted by the caller); the others go on.

Each :class:`TurnRecord` holds exactly what the model saw and produced: prompt ids, modality ids,
which chunks' video (the tensors are shared per row), response ids, rollout log-probs and the
response mask (0 on tokens the think budget forced). :meth:`Trajectory.model_inputs` rebuilds
the forward-pass inputs from them (position ids follow from ids, modality ids and grids).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.errors import StreamReasonError
from streamreason.rollout.chat import ChatEncoder, VideoSegment, concat_videos, find_subsequence
from streamreason.rollout.engine import Engine, Generation, GenerationRequest, SamplingConfig, ThinkBudget
from streamreason.rollout.memory import MemoryConfig, MemoryStats, make_memory
from streamreason.rollout.protocol import ParsedTurn, ProtocolConfig
from streamreason.types import Episode, StreamRow, TurnOutcome


@dataclass
class RolloutConfig:
    """Everything that shapes a rollout (the ``rollout`` section of a recipe).

    Attributes:
        env: chunking, fps, pixel budget (:class:`~streamreason.envs.stream.EnvConfig`).
        protocol: turn protocol, think budget, max new tokens per turn.
        memory: memory policy (``memory.name``), visual window W, eviction block B, text cap.
        sampling: temperature, top-p, top-k.
        group_size: G, trajectories per row (the GRPO group).
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    group_size: int = 8


@dataclass
class TurnRecord:
    """One turn as the policy lived it.

    Attributes:
        chunk_index: the turn's chunk (0-based).
        window_s: the chunk's ``(start, end)`` in seconds.
        prompt_ids: int32 ``[P]``, the exact context.
        mm_token_type_ids: int8 ``[P]``, modality per prompt token.
        video_chunks: chunks whose video is in the prompt, in order (tensors in
            :attr:`Trajectory.videos`).
        block_start: first turn of the eviction block (turns of one block pack into one row).
        response_ids: int32 ``[R]``, generated tokens (end-of-turn token included when generated).
        logprobs: float32 ``[R]``, rollout log-probs of ``response_ids``.
        response_mask: int8 ``[R]``, 1 on sampled tokens, 0 on tokens the think budget forced.
        env_ids: tokens the env appended after the response (end of the assistant turn).
        finish_reason: ``"stop"`` or ``"length"``.
        text: the decoded response (end-of-turn token removed).
        parsed: the protocol's reading of ``text``.
        think_tokens: tokens inside the think span.
        memory: context figures of this turn.
        cached_prompt_tokens: prompt tokens the engine served from its prefix cache (None:
            the engine has none).
        masked_spans: the prompt's ``(start, end, from_position)`` spans hidden by the attention
            mask (``memory.eviction=mask``; :attr:`~streamreason.rollout.memory.Prompt.masked_spans`).
    """

    chunk_index: int
    window_s: tuple[float, float]
    prompt_ids: np.ndarray
    mm_token_type_ids: np.ndarray
    video_chunks: list[int]
    block_start: int
    response_ids: np.ndarray
    logprobs: np.ndarray
    response_mask: np.ndarray
    env_ids: list[int]
    finish_reason: str
    text: str
    parsed: ParsedTurn
    think_tokens: int
    memory: MemoryStats
    cached_prompt_tokens: int | None = None
    masked_spans: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class Trajectory:
    """One of the G trajectories of a row.

    Attributes:
        row: the dataset row.
        group_index: 0..G-1 within the row's group.
        chunk_seconds: chunk length (seconds).
        turns: one record per chunk.
        videos: chunk index -> its encoded video, shared by the row's G trajectories.
        truncated: the env stopped at ``max_chunks`` before the video ended.
    """

    row: StreamRow
    group_index: int
    chunk_seconds: float
    turns: list[TurnRecord] = field(default_factory=list)
    videos: dict[int, VideoSegment] = field(default_factory=dict, repr=False)
    truncated: bool = False

    def episode(self) -> Episode:
        """The text-level view that reward functions score."""
        turns = [
            TurnOutcome(
                chunk_index=t.chunk_index,
                start_s=t.window_s[0],
                end_s=t.window_s[1],
                action=t.parsed.action,
                think=t.parsed.think,
                think_tokens=t.think_tokens,
                response=t.parsed.response,
                format_ok=t.parsed.format_ok,
                text=t.text,
            )  # fmt: skip
            for t in self.turns
        ]
        meta = dict(self.row.meta, task=self.row.task)
        n_chunks = self.turns[-1].chunk_index + 1 if self.turns else None
        return Episode(self.row.id, self.chunk_seconds, list(self.row.queries), turns, meta, n_chunks)

    def model_inputs(self, turn: int) -> dict[str, torch.Tensor]:
        """Forward-pass inputs of prompt + response of ``turn`` (batch of 1).

        Returns:
            ``input_ids`` / ``attention_mask`` / ``mm_token_type_ids`` int64 ``[1, P + R]``
            and the prompt's multimodal tensors (``pixel_values_videos``, ``video_grid_thw``,
            ...). Logits at positions ``P-1 .. P+R-2`` predict the response tokens.
        """
        t = self.turns[turn]
        ids = np.concatenate([t.prompt_ids, t.response_ids]).astype(np.int64)
        types = np.concatenate([t.mm_token_type_ids, np.zeros(len(t.response_ids), np.int8)]).astype(np.int64)
        out = {
            "input_ids": torch.from_numpy(ids)[None],
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "mm_token_type_ids": torch.from_numpy(types)[None],
        }
        out.update(concat_videos([self.videos[k] for k in t.video_chunks]))
        return out


@dataclass
class RowFailure:
    """A row dropped from a rollout, with the error that dropped it."""

    row_id: str
    error: StreamReasonError


def count_think_tokens(ids: list[int], open_ids: list[int], close_ids: list[int]) -> int:
    """Tokens strictly between the first think open tag and the close tag (or the end).

    The tags are found by id, so they must be single added tokens (``streamreason.modeling``
    ``add_protocol_tokens``, checked where a policy is loaded): a BPE that merges a tag with its
    neighbour (``><`` in ``</think><silent>``) has no fixed ids for it."""
    start = find_subsequence(ids, open_ids)
    if start < 0:
        return 0
    end = find_subsequence(ids, close_ids, start + len(open_ids))
    return (len(ids) if end < 0 else end) - start - len(open_ids)


def think_budget(encoder: ChatEncoder, cfg: RolloutConfig) -> ThinkBudget:
    """The rollout's :class:`ThinkBudget` in ``encoder``'s token ids: ``cfg.protocol``'s budget,
    what it counts and, with ``force_end_of_turn``, the end-of-turn token."""
    open_ids, close_ids = encoder.think_ids()
    p = cfg.protocol
    end = encoder.end_of_turn_id if p.force_end_of_turn else None
    return ThinkBudget(tuple(open_ids), tuple(close_ids), p.think_budget, p.think_budget_counts, end)


def encode_chunk(encoder: ChatEncoder, obs: dict) -> tuple[list[int], VideoSegment, list[int]]:
    """``(head_ids, video, tail_ids)`` of the user turn of an env observation."""
    start, end = obs["window_s"]
    frames = obs["frames"]
    video = encoder.video(frames, fps=len(frames) / (end - start))
    head, tail = encoder.user_turn(start, end, obs["queries"])
    return head, video, tail


class ChunkEncodings:
    """The user turns (:func:`encode_chunk`) of the chunks a group of trajectories watches,
    shared: a row's G trajectories see the same chunks, so the processor encodes each chunk
    once, not once per trajectory. Both drivers use it: :func:`run_rollouts` (one per call) and
    the verl agent loop (one per worker process).

    Keyed by the row's identity (id, video, stream end, queries) and the chunk index, so equal
    rows share their encodings; the ``size`` most recently used are kept. Thread-safe (verl's
    trajectories call it from executor threads): concurrent requests for one chunk wait for the
    first one's encoding, and a failed encoding is dropped (the next request tries again).

    Args:
        size: most encodings kept (least recently used dropped first).
    """

    def __init__(self, size: int = 128):
        self.size, self._lock, self._items = size, threading.Lock(), OrderedDict()

    def get(
        self, encoder: ChatEncoder, row: StreamRow, obs: dict
    ) -> tuple[list[int], VideoSegment, list[int]]:
        """``(head_ids, video, tail_ids)`` of ``obs``, an observation of ``row``'s stream; the
        first caller encodes, the others (concurrent ones included) wait for it.

        Raises:
            whatever the encoding raised, to every caller waiting for it.
        """
        key = (row.id, row.video_path, row.end_s, tuple(row.queries), obs["chunk_index"])
        with self._lock:
            item = self._items.get(key)
            owner = item is None
            if owner:
                item = self._items[key] = Future()
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(key)
        if owner:
            try:
                item.set_result(encode_chunk(encoder, obs))
            except BaseException as e:
                item.set_exception(e)
                with self._lock:
                    if self._items.get(key) is item:
                        del self._items[key]
        return item.result()


class TrajectoryRecorder:
    """Builds one trajectory turn by turn, for any driver of env and engine.

    :func:`run_rollouts` drives many in lockstep with one batched engine; the verl agent loop
    (``rl/verl_agent.py``) drives one per coroutine against verl's generation server. Per turn:
    :meth:`request` (observation → memory → the exact context), the driver generates, then
    :meth:`record` (generation → :class:`TurnRecord`, memory updated; the record's ``text`` is
    the env action).

    Args:
        traj: the trajectory to fill.
        encoder: the model's :class:`ChatEncoder`.
        cfg: rollout settings (memory, protocol).
    """

    def __init__(self, traj: Trajectory, encoder: ChatEncoder, cfg: RolloutConfig):
        self.traj, self.encoder = traj, encoder
        self.memory = make_memory(cfg.memory, encoder.system_ids)
        self.open_ids, self.close_ids = encoder.think_ids()
        self._turn: tuple | None = None

    def request(self, obs: dict, piece: tuple | None = None) -> GenerationRequest:
        """The generation request of the turn observing ``obs`` (``piece``: its
        :func:`encode_chunk`, when the caller shares one encoding between trajectories)."""
        head, video, tail = piece or encode_chunk(self.encoder, obs)
        k = obs["chunk_index"]
        self.traj.videos[k] = video
        self.memory.add_chunk(head, video, tail, has_query=bool(obs["queries"]))
        prompt = self.memory.prompt()
        self._turn = (obs, prompt)
        key = (self.traj.row.id, self.traj.group_index, k)
        return GenerationRequest(prompt.ids, prompt.mm_token_type_ids, list(prompt.videos), key,
                                 list(prompt.masked_spans))  # fmt: skip

    def record(self, gen: Generation) -> TurnRecord:
        """Store the generated turn; returns its record (``record.text`` is the env action)."""
        obs, prompt = self._turn
        ended = gen.finish_reason == "stop"
        body = gen.token_ids[:-1] if ended else gen.token_ids
        text = self.encoder.tokenizer.decode(body, skip_special_tokens=False)
        env_tail = self.encoder.end_of_turn(ended)
        record = TurnRecord(
            chunk_index=obs["chunk_index"], window_s=tuple(obs["window_s"]),
            prompt_ids=np.asarray(prompt.ids, np.int32), mm_token_type_ids=np.asarray(prompt.mm_token_type_ids, np.int8),
            video_chunks=list(prompt.video_chunks), block_start=prompt.block_start,
            response_ids=np.asarray(gen.token_ids, np.int32), logprobs=np.asarray(gen.logprobs, np.float32),
            response_mask=np.asarray([not f for f in gen.forced], np.int8), env_ids=list(env_tail),
            finish_reason=gen.finish_reason, text=text, parsed=self.encoder.protocol.parse(text, ended),
            think_tokens=count_think_tokens(body, self.open_ids, self.close_ids), memory=prompt.stats,
            cached_prompt_tokens=gen.cached_prompt_tokens, masked_spans=list(prompt.masked_spans),
        )  # fmt: skip
        self.traj.turns.append(record)
        self.memory.add_reply(gen.token_ids + env_tail)
        return record


@dataclass
class _Live:
    recorder: TrajectoryRecorder
    env_id: int
    row_index: int
    obs: dict

    @property
    def traj(self) -> Trajectory:
        return self.recorder.traj


def run_rollouts(
    rows: list[StreamRow],
    *,
    pool: EnvPool,
    engine: Engine,
    encoder: ChatEncoder,
    cfg: RolloutConfig,
    group_size: int | None = None,
    on_turn: Callable[[Trajectory, TurnRecord], None] | None = None,
    progress: bool = False,
) -> tuple[list[Trajectory], list[RowFailure]]:
    """Roll out ``group_size`` trajectories for each row, in lockstep.

    Args:
        rows: dataset rows.
        pool: env pool (Ray actors or in-process) built with ``cfg.env``.
        engine: generation engine.
        encoder: the model's :class:`ChatEncoder`.
        cfg: rollout settings.
        group_size: G (default ``cfg.group_size``).
        on_turn: called after each turn of each trajectory (e.g. a live transcript).
        progress: show a progress bar over turns.

    Returns:
        ``(trajectories, failures)``: G complete trajectories per good row (row-major, group
        order), and one :class:`RowFailure` per dropped row.
    """
    g = cfg.group_size if group_size is None else group_size
    budget = think_budget(encoder, cfg)
    groups = pool.make(rows, copies=g)
    env_ids = [e for grp in groups for e in grp]
    failures: dict[int, RowFailure] = {}
    live: list[_Live] = []
    total = 0
    for i, (env_id, res) in enumerate(zip(env_ids, pool.reset(env_ids))):
        r = i // g
        if isinstance(res, BaseException):
            failures.setdefault(r, RowFailure(rows[r].id, res))
            continue
        obs, info = res
        total += info["n_chunks"]
        traj = Trajectory(rows[r], i % g, info["chunk_seconds"])
        live.append(_Live(TrajectoryRecorder(traj, encoder, cfg), env_id, r, obs))
    # The copies of a row advance together, so one kept encoding per row is enough.
    pieces = ChunkEncodings(size=max(1, len(rows)))
    bar = tqdm(total=total, desc="rollout turns", unit="turn", leave=False, disable=not progress)
    finished: list[_Live] = []
    while live:
        requests = [x.recorder.request(x.obs, pieces.get(encoder, x.traj.row, x.obs)) for x in live]
        gens = engine.generate(requests, cfg.sampling, cfg.protocol.max_new_tokens, budget)
        actions = []
        for x, gen in zip(live, gens):
            record = x.recorder.record(gen)
            actions.append(record.text)
            if on_turn is not None:
                on_turn(x.traj, record)
        bar.update(len(live))
        still: list[_Live] = []
        for x, res in zip(live, pool.step([x.env_id for x in live], actions)):
            if isinstance(res, BaseException):
                failures.setdefault(x.row_index, RowFailure(x.traj.row.id, res))
            elif res[2] or res[3]:  # terminated or truncated
                x.traj.truncated = bool(res[3])
                finished.append(x)
            else:
                x.obs = res[0]
                still.append(x)
        live = still
    bar.close()
    pool.close(env_ids)
    done = [x for x in finished if x.row_index not in failures]
    done.sort(key=lambda x: (x.row_index, x.traj.group_index))
    return [x.traj for x in done], [failures[r] for r in sorted(failures)]
