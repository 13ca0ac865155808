"""The streaming loop as a verl agent loop (verl 0.9.1 ``verl/experimental/agent_loop``).

verl's V1 trainer (``verl/trainer/ppo/v1``) runs one :class:`StreamAgentLoop` coroutine per
trajectory on its agent-loop workers (Ray actors), ``rollout.n`` per dataset row. Each runs this
project's env, memory, protocol and recorder (:class:`~streamreason.rollout.loop.TrajectoryRecorder`)
unchanged; only generation goes through verl's LLM server (vLLM, prefix caching on) with the
chunks' raw frames. It returns one ``AgentLoopOutput`` per eviction block, the rows
:func:`~streamreason.rl.rows.build_rows` packs (B = 1: one per turn): prompt = the block's first
context, response = every token after it with ``response_mask`` 1 on sampled tokens only,
``response_logprobs`` the server's. verl's V1 GRPO computes one advantage per trajectory from the
last output's reward and copies it to all of the trajectory's outputs
(``verl/trainer/ppo/v1/utils.py:compute_advantage_for_multi_trajectories``), 0 for a group of
equal rewards (:mod:`streamreason.rl.verl_trainer`). All turns of a trajectory send one request
id, so verl's sticky routing keeps them on one vLLM replica and its prefix cache.

The reward is this project's composite reward on the whole episode, computed here and handed to
verl as the last output's ``reward_score`` with its components as ``reward_extra_info`` (verl's
reward loop is then skipped: ``AgentLoopWorker._compute_score``). A row whose video fails, or
whose reward fails under ``rewards.on_error=skip``, returns no output (logged; the group goes on
with the other trajectories).

The loop is configured by the run's resolved recipe, whose path verl passes to the constructor
from the agent-loop config file that :mod:`streamreason.rl.verl_backend` writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from functools import cache
from typing import Any
from uuid import uuid4

import numpy as np
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

from streamreason.errors import StreamReasonError
from streamreason.rewards.composite import RewardResult
from streamreason.rl.rows import TrainRow, build_rows
from streamreason.rollout.engine import BudgetCut, Generation, GenerationRequest, finish_turn
from streamreason.rollout.loop import ChunkEncodings, Trajectory, TrajectoryRecorder, think_budget
from streamreason.rollout.vllm_engine import check_video_timing, vllm_videos
from streamreason.types import StreamRow

logger = logging.getLogger(__name__)

AGENT_NAME = "streamreason"
MM_PROCESSOR_KWARGS = {"do_resize": False}  # frames arrive at the env's budgeted size


# Trajectories of one worker share its frame store, and PyAV decoders are not thread-safe:
# env calls run in the executor (off the event loop) one at a time.
_ENV_LOCK = threading.Lock()


def _locked(fn, *args):
    with _ENV_LOCK:
        return fn(*args)


@cache
def _stack(path: str):
    """Per worker process: the run's rollout settings, its composite reward, one frame store
    and one set of chunk encodings shared by all trajectories (a row's G copies on one worker
    decode and encode its video once).

    Reads only the ``rollout`` and ``rewards`` sections of the run's resolved recipe
    (``config.yaml``, :func:`~streamreason.schema.load_sections`) and builds the reward as
    every job does (:mod:`streamreason.stack`): the model, tokenizer and processor are verl's.
    """
    from streamreason.envs.stream import FrameStore
    from streamreason.rewards.composite import RewardConfig
    from streamreason.rollout.loop import RolloutConfig
    from streamreason.schema import load_sections
    from streamreason.stack import make_reward

    recipe = load_sections(path, {"rollout": RolloutConfig, "rewards": RewardConfig})
    return recipe.rollout, make_reward(recipe), FrameStore(recipe.rollout.env), ChunkEncodings()


def row_output(row: TrainRow, prompt_len: int, num_turns: int, metrics: AgentLoopMetrics) -> AgentLoopOutput:
    """One packed row as verl's ``AgentLoopOutput`` (prompt = the first ``prompt_len`` tokens)."""
    return AgentLoopOutput(
        prompt_ids=row.input_ids[:prompt_len].tolist(),
        response_ids=row.input_ids[prompt_len:].tolist(),
        response_mask=row.loss_mask[prompt_len:].astype(np.int64).tolist(),
        response_logprobs=row.old_logprobs[prompt_len:].tolist(),
        multi_modal_data={"videos": vllm_videos(row.videos)} if row.videos else None,
        mm_processor_kwargs=dict(MM_PROCESSOR_KWARGS),
        num_turns=num_turns,
        metrics=metrics,
    )  # fmt: skip


def trajectory_outputs(
    traj: Trajectory, reward: RewardResult, metrics: AgentLoopMetrics, extra: dict | None = None
) -> list[AgentLoopOutput]:
    """A finished trajectory as verl outputs, one per eviction block, the reward on the last.

    ``extra`` goes into every output's ``extra_fields`` (verl's V1 trainer tags each output with
    the ``min_global_steps`` / ``max_global_steps`` of the weights that generated it).

    Returns:
        ``AgentLoopOutput`` per block in turn order; the last carries ``reward_score`` (the
        composite total) and ``extra_fields["reward_extra_info"]`` (each component, ``reward/NAME``).
    """
    rows = build_rows([traj])
    starts = {}
    for t in traj.turns:
        starts.setdefault(t.block_start, len(t.prompt_ids))
    blocks = sorted(starts)
    outputs = [
        row_output(row, starts[b], 2 * (row.turns[1] - row.turns[0] + 1), metrics)
        for row, b in zip(rows, blocks)
    ]
    outputs[-1].reward_score = float(reward.total)
    info = {"reward": float(reward.total), **{f"reward/{k}": float(v) for k, v in reward.components.items()}}
    for out in outputs:
        out.extra_fields.update(turn_scores=[], tool_rewards=[], row_id=traj.row.id, **(extra or {}))
    outputs[-1].extra_fields["reward_extra_info"] = info
    return outputs


class StreamAgentLoop(AgentLoopBase):
    """verl agent loop running one streaming trajectory (see the module docstring).

    Args:
        recipe: path of the run's resolved recipe (``config.yaml`` in the run directory).
        *args, **kwargs: verl's ``AgentLoopBase`` arguments (config, server manager, tokenizer,
            processor, ...).
    """

    def __init__(self, *args, recipe: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_type = kwargs.get("hf_model_type") or ""
        from streamreason.stack import make_encoder

        self.rollout_cfg, self.reward, self.store, self.chunks = _stack(recipe)
        self.encoder = make_encoder(self.processor, self.rollout_cfg)
        vocab = self.tokenizer.get_vocab()
        self.end_ids = [vocab["<|im_end|>"]]

    async def _generate(
        self,
        request_id: str,
        request: GenerationRequest,
        sampling_params: dict[str, Any],
        budget,
        steps: dict,
    ) -> Generation:
        """One turn through verl's server, the think budget applied by :func:`finish_turn`;
        ``steps`` accumulates the weight versions (global steps) the server reports.

        ``request_id`` is the trajectory's: verl's server manager routes by it, sticky
        (``verl/workers/rollout/router.py``, ``GlobalRequestLoadBalancer.acquire_server``: an LRU
        map request id → replica), so every turn, and the resumed half of a turn cut at the
        think budget, reaches the replica that holds the trajectory's prefix in its cache, as
        verl's own multi-turn ``ToolAgentLoop`` does (one ``request_id`` per ``run``). vLLM
        rejects a request id that is still running ("Request id … already running",
        ``vllm/v1/engine/output_processor.py``); a trajectory's calls are sequential, each
        finished before the next is sent, so one id never runs twice at once."""
        max_new = self.rollout_cfg.protocol.max_new_tokens
        check_video_timing(request.videos, self.model_type)  # verl's server is vLLM
        videos = vllm_videos(request.videos) if request.videos else None

        async def sample(tail: list[int], max_tokens: int):
            params = dict(sampling_params, max_tokens=max_tokens, stop_token_ids=self.end_ids, logprobs=True)
            out = await self.server_manager.generate(
                request_id=request_id, prompt_ids=request.prompt_ids + tail, sampling_params=params,
                video_data=videos, mm_processor_kwargs=dict(MM_PROCESSOR_KWARGS),
            )  # fmt: skip
            for key, pick in (("min_global_steps", min), ("max_global_steps", max)):
                if (v := out.extra_fields.get(key)) is not None:
                    steps[key] = v if steps.get(key) is None else pick(steps[key], v)
            return list(out.token_ids), list(out.log_probs or [0.0] * len(out.token_ids))

        gen = finish_turn(*(await sample([], max_new)), self.end_ids, budget, max_new)
        if isinstance(gen, BudgetCut):
            rest = await sample(gen.token_ids, max_new - len(gen.token_ids))
            gen = finish_turn(*rest, self.end_ids, budget, max_new, resumed=gen)
        return gen

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> list[AgentLoopOutput]:
        """Roll out one trajectory of the dataset row in ``kwargs["extra_info"]["row"]`` (JSON).

        Returns:
            one output per eviction block, or [] when the row's video or its reward failed.
        """
        from streamreason.envs.stream import StreamingVideoEnv

        cfg = self.rollout_cfg
        extra = kwargs["extra_info"]
        row = StreamRow.from_dict(json.loads(extra["row"]), where=f"verl dataset row {extra.get('index')}")
        loop = asyncio.get_running_loop()
        env = StreamingVideoEnv(cfg.env, store=self.store)
        t0, gen_s, steps = time.perf_counter(), 0.0, {}
        request_id = uuid4().hex  # one per trajectory: all its turns go to one replica
        try:
            obs, info = await loop.run_in_executor(None, _locked, env.reset, row)
            traj = Trajectory(row, int(kwargs.get("session_id", 0)), info["chunk_seconds"])
            recorder, budget = (
                TrajectoryRecorder(traj, self.encoder, cfg),
                think_budget(self.encoder, cfg),
            )
            while True:
                request = await loop.run_in_executor(
                    None, lambda o=obs: recorder.request(o, self.chunks.get(self.encoder, row, o))
                )
                t1 = time.perf_counter()
                gen = await self._generate(request_id, request, sampling_params, budget, steps)
                gen_s += time.perf_counter() - t1
                record = recorder.record(gen)
                obs, _, terminated, truncated, _ = await loop.run_in_executor(
                    None, _locked, env.step, record.text
                )
                if terminated or truncated:
                    traj.truncated = bool(truncated)
                    break
        except StreamReasonError as e:
            logger.warning("streamreason: row %s skipped: %s", row.id, e)
            return []
        finally:
            _locked(env.close)
        result = self.reward(traj.episode())
        if not result.ok:  # on_error=fail raised inside the reward already
            logger.warning("streamreason: reward of row %s skipped: %s", row.id, result.error)
            return []
        metrics = AgentLoopMetrics(generate_sequences=gen_s, tool_calls=time.perf_counter() - t0 - gen_s)
        return trajectory_outputs(traj, result, metrics, steps)


class LocalServer:
    """verl's LLM-server ``generate`` interface over an in-process :class:`Engine`.

    What a verl agent loop calls (``LLMServerClient.generate``), served by this project's
    transformers engine on CPU, so :class:`StreamAgentLoop` runs end to end without a GPU
    (tests, debugging a recipe). Like vLLM, it re-encodes the raw frames it is given with the
    model's processor and checks that the prompt's placeholders match them.

    Args:
        engine: e.g. a :class:`~streamreason.rollout.engine.TransformersEngine`.
        encoder: the model's :class:`~streamreason.rollout.chat.ChatEncoder`.
    """

    def __init__(self, engine, encoder):
        self.engine, self.encoder = engine, encoder
        tok = encoder.tokenizer
        self.video_id = tok.convert_tokens_to_ids(encoder.processor.video_token)

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], image_data=None,
        video_data=None, mm_processor_kwargs=None, **kwargs,
    ):  # fmt: skip
        """Returns verl's ``TokenOutput`` (token ids and their log-probs)."""
        from verl.workers.rollout.replica import TokenOutput

        from streamreason.rollout.engine import SamplingConfig

        segments = [self.encoder.video(frames, fps=meta["fps"]) for frames, meta in (video_data or [])]
        types = [2 if t == self.video_id else 0 for t in prompt_ids]
        if sum(types) // 2 != sum(s.visual_tokens for s in segments):
            raise ValueError(
                f"request {request_id}: prompt placeholders do not match the {len(segments)} videos"
            )
        sampling = SamplingConfig(
            temperature=sampling_params.get("temperature", 1.0), top_p=sampling_params.get("top_p", 1.0),
            top_k=max(0, sampling_params.get("top_k", 0)),
        )  # fmt: skip
        request = GenerationRequest(prompt_ids, types, segments)
        (gen,) = await asyncio.get_running_loop().run_in_executor(
            None, self.engine.generate, [request], sampling, sampling_params["max_tokens"]
        )
        return TokenOutput(token_ids=gen.token_ids, log_probs=gen.logprobs, stop_reason="completed",
                           extra_fields={"min_global_steps": 0, "max_global_steps": 0})  # fmt: skip
