"""SFT warm-start on gold watch-think-speak trajectories.

A gold trajectory says, for each chunk, the row's gold think trace (ThinkStream SFT
``thoughts``, or the synthetic generator's) and the right decision: ``<response>answer`` in the
chunk where a query's answer becomes correct, ``<silent>`` everywhere else. It is rolled out
through the very loop, memory and chat encoding that GRPO uses, with a scripted engine that
"generates" the gold tokens, so SFT trains on the same packed rows (and the same contexts) as RL.

Silence dominates (one response per query against ~T silent turns), so the decision token of
each turn is class-balanced and optionally focal-weighted (Streamo; ``Learner.sft_update``).
Under a protocol with a standby state (``streamo``) the turns while a query waits for its answer
are ``<standby>`` (:func:`gold_turn`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streamreason.envs.stream import ChunkPlan, EnvConfig
from streamreason.envs.video import probe_video
from streamreason.errors import ConfigError
from streamreason.rl.learner import ALPHA_COUNTS, barrier, shard
from streamreason.rl.metrics import MetricsLogger
from streamreason.rl.rows import TrainRow, build_rows
from streamreason.rl.training import PolicyTrainer
from streamreason.rollout.chat import ChatEncoder, find_subsequence
from streamreason.rollout.engine import Engine, Generation
from streamreason.rollout.loop import RolloutConfig, RowFailure, run_rollouts
from streamreason.stack import load_rows
from streamreason.types import StreamRow
from streamreason.types import chunk_index as time_to_chunk  # gold_turn has an argument chunk_index

DECISIONS = ("silent", "response", "standby")
"""Decision classes, in label order (``TrainRow.decision`` values 0, 1, 2)."""


@dataclass
class SFTConfig:
    """SFT warm-start (``streamreason sft``).

    Attributes:
        epochs: passes over the training rows.
        lr: peak learning rate (ThinkStream's cold start: 1e-5 for Qwen2.5-VL-3B).
        rows_per_step: dataset rows per optimizer step.
        balance_decisions: class-balance the decision token: ``α_c = Σ_j n_j / (C · n_c)``
            (``Learner.sft_update``).
        alpha_counts: where the class counts ``n_c`` of ``α_c`` come from: ``step``, the
            optimizer step's rows (on this rank); ``trajectory``, each trajectory's own turns, as
            Streamo's code counts them (its loss sees one video per forward; see
            :func:`~streamreason.rl.learner.state_alphas`).
        focal_gamma: Streamo's focal exponent on the decision token (0 = off, Streamo: 2).

    Raises:
        ConfigError: ``alpha_counts`` is not one of :data:`~streamreason.rl.learner.ALPHA_COUNTS`,
            or ``focal_gamma`` < 0.
    """

    epochs: int = 3
    lr: float = 1e-5
    rows_per_step: int = 8
    balance_decisions: bool = True
    alpha_counts: str = "step"
    focal_gamma: float = 0.0

    def __post_init__(self):
        if self.alpha_counts not in ALPHA_COUNTS:
            raise ConfigError(
                f"sft.alpha_counts must be one of {list(ALPHA_COUNTS)}, got {self.alpha_counts!r}"
            )
        if not self.focal_gamma >= 0:
            raise ConfigError(f"sft.focal_gamma must be >= 0, got {self.focal_gamma!r}")


def gold_turn(encoder: ChatEncoder, row: StreamRow, chunk_index: int, chunk_seconds: float,
              last_chunk: int | None = None) -> str:  # fmt: skip
    """The gold text of ``row``'s turn at ``chunk_index``: its think traces, then the answer of
    the first query whose answer becomes correct in this chunk, else ``<standby>`` when the
    protocol has that state and a query asked at or before this chunk is answered later, else
    ``<silent>``. A turn without thoughts has an empty think span, or none when the protocol's
    think span is optional (Streamo's turns are the state alone).

    Standby: Streamo labels the frames of an annotated event ``</Standby>`` and answers in the
    frame after it (``scripts/convert_streaming_video.py`` ``build_frame_states``: standby over
    ``[st_time, end_time]``, response at ``end_time + 1``); our rows carry the question's time
    and the answer's, not the event's start, so the span we mark is the question's wait
    ``[chunk(time_s), chunk(answer_time_s))`` (Streamo's prompt: "the current input is relevant
    but the question cannot yet be answered").

    Times at or past the stream's end (``last_chunk``, when given) belong to the last chunk,
    as the env shows queries there (ThinkStream's SFT data: the last chunk takes all remaining
    thoughts and answers).
    """

    def chunk_of(t: float) -> int:
        return time_to_chunk(t, chunk_seconds, None if last_chunk is None else last_chunk + 1)

    protocol = encoder.protocol
    think: str | None = "; ".join(t.think for t in row.thoughts if chunk_of(t.time_s) == chunk_index)
    if not think and protocol.THINK_OPTIONAL:
        think = None
    waiting = False
    for q in sorted(row.queries, key=lambda q: q.time_s):
        if q.answer is None:
            continue
        at = chunk_of(q.time_s if q.answer_time_s is None else q.answer_time_s)
        if at == chunk_index:
            return protocol.render(think, "response", q.answer)
        waiting |= chunk_of(q.time_s) <= chunk_index < at
    return protocol.render(think, "standby" if waiting and "standby" in protocol.STATES else "silent")


class ScriptedEngine(Engine):
    """An engine that returns each turn's gold tokens (teacher forcing through the real loop).

    Args:
        encoder: the model's chat encoder.
        rows: the rows being rolled out, by id.
        env: the env's config (the gold schedule is in its chunks; each row's last chunk comes
            from its video's length and ``end_s``).
    """

    def __init__(self, encoder: ChatEncoder, rows: list[StreamRow], env: EnvConfig):
        self.encoder, self.env = encoder, env
        self.rows = {r.id: r for r in rows}
        self._last: dict[str, int] = {}

    def _last_chunk(self, row: StreamRow) -> int:
        if row.id not in self._last:
            plan = ChunkPlan.for_video(self.env, probe_video(row.video_path), row.end_s)
            self._last[row.id] = plan.n_chunks - 1
        return self._last[row.id]

    def generate(self, requests, sampling, max_new_tokens, think_budget=None):
        out = []
        for req in requests:
            row_id, _, k = req.key
            row = self.rows[row_id]
            text = gold_turn(self.encoder, row, k, self.env.chunk_seconds, self._last_chunk(row))
            ids = self.encoder.text(text)
            ids.append(self.encoder.end_of_turn_id)
            out.append(Generation(ids, [0.0] * len(ids), [False] * len(ids), "stop"))
        return out


def decision_labels(row: TrainRow, encoder: ChatEncoder) -> np.ndarray:
    """Label array ``[L]``: the decision class at the first token after each turn's think span
    (where the row's loss mask starts a turn), -1 elsewhere.

    The tags are matched by id, so they must be single tokens in context, as
    ``streamreason.modeling.load_policy`` guarantees (``check_protocol_tokens``): in a base
    Qwen2.5-VL BPE, ``</think><silent>`` merges into ``'</' 'think' '><' 'silent' '>'`` and no
    label would be found."""
    _, close = encoder.think_ids()
    tags = [encoder.text(f"<{d}>") for d in DECISIONS]
    ids, mask = row.input_ids.tolist(), row.loss_mask
    labels = np.full(len(ids), -1, dtype=np.int64)
    starts = [i for i in range(len(ids)) if mask[i] > 0 and (i == 0 or mask[i - 1] == 0)]
    for s in starts:
        end = s
        while end < len(ids) and mask[end] > 0:
            end += 1
        turn = ids[s:end]
        at = find_subsequence(turn, close)
        pos = 0 if at < 0 else at + len(close)
        for c, tag in enumerate(tags):
            if turn[pos : pos + len(tag)] == tag:
                labels[s + pos] = c
    return labels


def sft_rows(
    rows: list[StreamRow], *, pool, encoder: ChatEncoder, cfg: RolloutConfig
) -> tuple[list[TrainRow], list[RowFailure]]:
    """Gold trajectories of ``rows`` as packed training rows with decision labels.

    Chunk length must not be adaptive per video (``cfg.env.adaptive_chunks`` False): the gold
    schedule is cut at ``cfg.env.chunk_seconds``.
    """
    engine = ScriptedEngine(encoder, rows, cfg.env)
    trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg, group_size=1)
    train = build_rows(trajs)
    for r in train:
        r.decision = decision_labels(r, encoder)
    return train, failures


class SFTTrainer(PolicyTrainer):
    """The SFT warm-start job (``streamreason sft``): the policy, the env pool and a learner; no
    engine (the gold turns are scripted), no reward, no reference model.

    Args:
        cfg: the recipe (``sft`` section, ``data.train``, ``rollout`` for the contexts).
        run_dir: overrides ``cfg.trainer.run_dir``.
    """

    def __init__(self, cfg, run_dir: str | None = None):
        super().__init__(cfg, run_dir, with_engine=False)

    def train(self) -> dict[str, float]:
        """SFT on the gold trajectories of ``data.train``; exports ``run_dir/final`` and returns
        the last step's metrics (``loss``, ``decision_acc``, ``grad_norm``, ``lr``).

        Raises:
            ConfigError: the run directory holds a run, or ``data.train`` is missing or empty.
        """
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict[str, float]:
        cfg, sc = self.cfg, self.cfg.sft
        if self.run.holds_run():
            raise ConfigError(f"{self.run.path} already holds a run: set another trainer.run_dir")
        barrier()  # every rank has looked before rank 0 writes the status
        rows, _ = load_rows(cfg.data.train)
        train, failures = sft_rows(shard(rows), pool=self.pool, encoder=self.policy.encoder, cfg=cfg.rollout)
        by_row: dict[int, list] = {}
        for r in train:
            by_row.setdefault(r.traj_index, []).append(r)
        groups = list(by_row.values())
        steps_per_epoch = max(1, math.ceil(len(groups) / sc.rows_per_step))
        total = sc.epochs * steps_per_epoch
        learner = self.learner(total, lr=sc.lr)
        if self.rank == 0:
            self.run.start(cfg, "local", total)
        try:
            metrics = self._epochs(learner, groups, total, float(len(failures)))
        except BaseException as e:
            if self.rank == 0:
                self.run.fail(f"{type(e).__name__}: {e}")
            raise
        learner.export(self.run.final, self.policy.processor)
        if self.rank == 0:
            self.run.finish()
        return metrics

    def _epochs(
        self, learner, groups: list[list[TrainRow]], total: int, rows_failed: float
    ) -> dict[str, float]:
        from tqdm.auto import tqdm

        sc = self.cfg.sft
        logger = MetricsLogger(self.run.path, tensorboard=self.cfg.trainer.tensorboard, rank=self.rank)
        rng = np.random.default_rng(self.cfg.trainer.seed)
        step = 0
        bar = tqdm(total=total, desc="sft", disable=self.rank != 0)
        metrics: dict[str, float] = {}
        for _ in range(sc.epochs):
            order = rng.permutation(len(groups))
            for i in range(0, len(order), sc.rows_per_step):
                batch = [r for g in order[i : i + sc.rows_per_step] for r in groups[g]]
                metrics = learner.sft_update(batch, balance=sc.balance_decisions, focal_gamma=sc.focal_gamma,
                                             alpha_counts=sc.alpha_counts)  # fmt: skip
                step += 1
                logger.log(step, {**metrics, "rows_failed": rows_failed}, prefix="sft/")
                if self.rank == 0:
                    self.run.update(step)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", dec_acc=f"{metrics['decision_acc']:.2f}")
        bar.close()
        logger.close()
        return metrics
