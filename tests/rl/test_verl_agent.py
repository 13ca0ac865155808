"""The verl backend on CPU: the agent loop's ``run()`` against a real in-process server that
implements verl's generate interface with the transformers engine, the outputs read back the
way verl's V1 workers read them, the reward adapter and the run directory of ``--dry-run``."""

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import streamreason.recipes
from streamreason.cli import main
from streamreason.config import load_config
from streamreason.envs.synthetic import synthesize
from streamreason.rewards.composite import CompositeReward
from streamreason.rl.verl_agent import LocalServer, StreamAgentLoop, trajectory_outputs
from streamreason.rl.verl_backend import prepare_run
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.engine import TransformersEngine
from streamreason.rollout.protocol import get_protocol

RECIPE = str(Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml")


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verl")
    data = synthesize(tmp / "data", n=2, seed=3, min_seconds=5, max_seconds=5)
    cfg = load_config(RECIPE, [f"model={tiny_model_dir}", f"data.train={data}", f"data.eval={data}",
                               f"trainer.run_dir={tmp / 'run'}", "rollout.memory.window_chunks=2",
                               "rollout.memory.evict_block=2", "rollout.protocol.think_budget=3"])  # fmt: skip
    return cfg, prepare_run(cfg, tmp / "run"), tmp / "run"


def _agent_loop(cfg, config, run_dir, tiny_policy, server_cls=LocalServer):
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    model, processor = tiny_policy
    encoder = ChatEncoder(processor, get_protocol(cfg.rollout.protocol.name))
    server = server_cls(TransformersEngine(model, processor.tokenizer, seed=0), encoder)
    loop = StreamAgentLoop(
        trainer_config=DictConfigWrap(config), server_manager=server, tokenizer=processor.tokenizer,
        processor=processor, dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data),
        recipe=str(run_dir / "config.yaml"),
    )  # fmt: skip
    return loop, model, processor


def test_agent_loop_outputs_are_what_verl_trains_on(run, tiny_policy):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    cfg, config, run_dir = run
    loop, model, processor = _agent_loop(cfg, config, run_dir, tiny_policy)
    row = pd.read_parquet(run_dir / "train.parquet").iloc[0]
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    outputs = asyncio.run(loop.run(params, extra_info=dict(row["extra_info"]), session_id=1))
    n_chunks = 5
    mem = cfg.rollout.memory
    assert len(outputs) == len({mem.block_start(t) for t in range(n_chunks)}) == 2  # turns 0-2, 3-4
    assert outputs[-1].reward_score == outputs[-1].extra_fields["reward_extra_info"]["reward"]
    assert all(o.reward_score is None for o in outputs[:-1])
    assert sum(o.num_turns for o in outputs) == 2 * n_chunks
    assert all(o.extra_fields["min_global_steps"] == 0 == o.extra_fields["max_global_steps"] for o in outputs)
    # Read each output back as verl's worker does: pixels re-processed from the raw frames, then
    # the policy's log-probs at the sampled tokens must be the ones the server returned.
    worker = SimpleNamespace(processor=processor, tokenizer=processor.tokenizer)
    video_id = processor.tokenizer.convert_tokens_to_ids(processor.video_token)
    for out in outputs:
        ids = torch.tensor(out.prompt_ids + out.response_ids)[None]
        mm = AgentLoopWorker._compute_multi_modal_inputs(worker, out, ids)
        types = (ids == video_id).long() * 2
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
                           **{k: v for k, v in mm.items() if k not in ("images_seqlens", "mm_token_type_ids")}).logits[0]  # fmt: skip
        p = len(out.prompt_ids)
        logp = torch.log_softmax(logits[p - 1 : -1].float(), -1).gather(-1, ids[0, p:, None])[:, 0]
        mask = torch.tensor(out.response_mask, dtype=torch.bool)
        assert mask.any() and not mask.all()  # env tokens (and forced ones) are masked out
        np.testing.assert_allclose(
            logp[mask].numpy(), np.array(out.response_logprobs)[mask.numpy()], atol=1e-4
        )


def test_a_missing_video_gives_no_outputs(run, tiny_policy, tmp_path):
    cfg, config, run_dir = run
    loop, _, _ = _agent_loop(cfg, config, run_dir, tiny_policy)
    row = json.loads(pd.read_parquet(run_dir / "train.parquet").iloc[0]["extra_info"]["row"])
    row["video_path"] = str(tmp_path / "gone.mp4")
    outputs = asyncio.run(loop.run({"temperature": 1.0}, extra_info={"index": 0, "row": json.dumps(row)}))
    assert outputs == []


def test_reward_adapter_puts_the_composite_reward_on_the_last_output(tiny_policy, tmp_path):
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics

    from streamreason.envs.pool import EnvPool
    from streamreason.rollout.loop import run_rollouts
    from streamreason.types import read_rows

    cfg = load_config(
        RECIPE, ["rollout.memory.window_chunks=1", "rollout.memory.evict_block=1", "rollout.group_size=1"]
    )
    rows, _ = read_rows(synthesize(tmp_path, n=1, seed=0, min_seconds=4, max_seconds=4))
    model, processor = tiny_policy
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    with EnvPool(cfg.rollout.env, in_process=True) as pool:
        (traj,), _ = run_rollouts(rows, pool=pool, engine=TransformersEngine(model, processor.tokenizer, seed=0),
                                  encoder=encoder, cfg=cfg.rollout)  # fmt: skip
    reward = CompositeReward(cfg.rewards)(traj.episode())
    outs = trajectory_outputs(traj, reward, AgentLoopMetrics())
    assert len(outs) == len(traj.turns) == 4  # W=1, B=1: one row per turn
    assert outs[-1].reward_score == pytest.approx(reward.total)
    info = outs[-1].extra_fields["reward_extra_info"]
    assert info == {"reward": pytest.approx(reward.total), **{f"reward/{k}": pytest.approx(v)
                                                              for k, v in reward.components.items()}}  # fmt: skip
    for out, turn in zip(outs, traj.turns):
        assert out.prompt_ids == turn.prompt_ids.tolist() and out.response_ids == turn.response_ids.tolist()
        assert out.response_logprobs == pytest.approx(turn.logprobs.tolist())


def test_dry_run_writes_the_verl_run_directory(run, tiny_model_dir, tmp_path):
    cfg, _, _ = run
    out = tmp_path / "dry"
    main(["train", RECIPE, "trainer.backend=verl", "--dry-run", f"model={tiny_model_dir}",
          f"data.train={cfg.data.train}", f"data.eval={cfg.data.eval}", f"trainer.run_dir={out}",
          "verl.actor_rollout_ref.rollout.gpu_memory_utilization=0.25"])  # fmt: skip
    from omegaconf import OmegaConf

    verl_cfg = OmegaConf.load(out / "verl_config.yaml")
    assert verl_cfg.actor_rollout_ref.rollout.gpu_memory_utilization == 0.25
    assert verl_cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "streamreason"
    assert verl_cfg.trainer.use_v1 is True
    assert verl_cfg.trainer.v1.trainer_mode == "streamreason"
    assert (
        verl_cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES
        == "streamreason.rl.verl_trainer"
    )
    (entry,) = OmegaConf.load(out / "agent_loop.yaml")
    assert entry.recipe == str((out / "config.yaml").resolve())
    df = pd.read_parquet(out / "train.parquet")
    assert len(df) == 2 and all(
        Path(json.loads(x["row"])["video_path"]).is_absolute() for x in df["extra_info"]
    )


def test_concurrent_trajectories_share_one_worker(run, tiny_policy, monkeypatch):
    """verl runs a row's G trajectories as coroutines of one worker: they share its frame store
    and its chunk encodings (each chunk encoded once, not once per trajectory)."""
    import streamreason.rl.verl_agent as agent
    import streamreason.rollout.loop as loop_module  # ChunkEncodings encodes through its encode_chunk

    encoded = []
    real = loop_module.encode_chunk
    monkeypatch.setattr(
        loop_module, "encode_chunk", lambda enc, obs: encoded.append(obs["chunk_index"]) or real(enc, obs)
    )
    agent._stack.cache_clear()  # a fresh worker: earlier tests' encodings are not cached
    cfg, config, run_dir = run
    loop, _, _ = _agent_loop(cfg, config, run_dir, tiny_policy)
    extra = dict(pd.read_parquet(run_dir / "train.parquet").iloc[1]["extra_info"])

    async def group():
        return await asyncio.gather(
            *[loop.run({"temperature": 1.0}, extra_info=extra, session_id=i) for i in range(4)]
        )

    outputs = asyncio.run(group())
    assert all(len(o) == 2 for o in outputs)
    assert len({tuple(o[0].prompt_ids) for o in outputs}) == 1  # same row, same first context
    assert sorted(encoded) == list(range(5))  # a 5 s stream: 5 chunks, each encoded once for 4 trajectories


class RecordingServer(LocalServer):
    """A server manager that records the request id of every generate call, and fails a call
    whose id is still running (vLLM's ``OutputProcessor.add_request``: "Request id … already running")."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls, self.running = [], set()

    async def generate(self, request_id, **kwargs):
        assert request_id not in self.running, f"request id {request_id} sent while still running"
        self.running.add(request_id)
        try:
            return await super().generate(request_id, **kwargs)
        finally:
            self.running.discard(request_id)
            self.calls.append(request_id)


def test_every_turn_of_a_trajectory_sends_its_one_request_id(run, tiny_policy):
    """verl's server manager routes by request id, sticky (``GlobalRequestLoadBalancer``): one id
    per trajectory keeps all its turns, and both halves of a turn cut at the think budget, on one
    replica; other trajectories send other ids."""
    cfg, config, run_dir = run
    loop, _, _ = _agent_loop(cfg, config, run_dir, tiny_policy, server_cls=RecordingServer)
    server = loop.server_manager
    extra = dict(pd.read_parquet(run_dir / "train.parquet").iloc[0]["extra_info"])
    outputs = asyncio.run(loop.run({"temperature": 1.0}, extra_info=extra, session_id=0))
    turns = sum(o.num_turns for o in outputs) // 2
    assert turns == 5 and len(server.calls) >= turns and len(set(server.calls)) == 1
    first = server.calls[0]

    async def group():
        return await asyncio.gather(
            *[loop.run({"temperature": 1.0}, extra_info=extra, session_id=i) for i in range(1, 4)]
        )

    server.calls.clear()
    asyncio.run(group())
    ids = set(server.calls)
    assert len(ids) == 3 and first not in ids
    assert all(server.calls.count(i) >= turns for i in ids)
