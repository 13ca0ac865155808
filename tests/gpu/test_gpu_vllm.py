"""The vLLM engine on a GPU (``pytest -m gpu``): exact contexts, log-probs that match the policy,
in-place weight updates, and a Qwen2.5-VL-3B-shaped model (random weights) on synthetic streams."""

import time

import numpy as np
import pytest
import torch

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import synthesize
from streamreason.modeling import build_reference_config, load_policy
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import ProtocolConfig, get_protocol
from streamreason.types import read_rows

pytestmark = pytest.mark.gpu
pytest.importorskip("vllm")


def _max_logprob_error(model, traj) -> float:
    worst = 0.0
    for i, turn in enumerate(traj.turns):
        inputs = {k: v.to("cuda") for k, v in traj.model_inputs(i).items()}
        with torch.no_grad():
            logits = model(**inputs).logits[0].float()
        p = len(turn.prompt_ids)
        ids = torch.from_numpy(turn.response_ids.astype(np.int64)).cuda()
        ref = torch.log_softmax(logits[p - 1 : -1], -1).gather(-1, ids[:, None])[:, 0].cpu().numpy()
        mask = turn.response_mask.astype(bool)
        worst = max(worst, float(np.abs(ref[mask] - turn.logprobs[mask]).max(initial=0.0)))
    return worst


@pytest.mark.parametrize("dtype, atol", [("float32", 2e-3), ("bfloat16", 0.15)])
def test_vllm_engine_rollout_matches_the_policy_and_takes_new_weights(tiny_model_dir, tmp_path, dtype, atol):
    from streamreason.rollout.vllm_engine import VLLMEngine

    rows, _ = read_rows(synthesize(tmp_path, n=2, seed=0, min_seconds=8, max_seconds=8))
    model, processor = load_policy(tiny_model_dir, dtype=torch.float32, device="cuda")
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    env = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112)
    cfg = RolloutConfig(env=env, memory=MemoryConfig(window_chunks=3, evict_block=2), group_size=4,
                        protocol=ProtocolConfig(think_budget=4, max_new_tokens=12))  # fmt: skip
    engine = VLLMEngine(tiny_model_dir, processor.tokenizer, max_videos=4, dtype=dtype,
                        gpu_memory_utilization=0.15, enforce_eager=True, max_model_len=8192)  # fmt: skip
    with EnvPool(env, in_process=True) as pool:
        t0 = time.perf_counter()
        trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg)
        print(
            f"vLLM tiny rollout: {sum(len(t.turns) for t in trajs)} turns in {time.perf_counter() - t0:.2f} s"
        )
        assert not failures and len(trajs) == 8 and all(len(t.turns) == 8 for t in trajs)
        err = max(_max_logprob_error(model, t) for t in trajs[:2])
        print(f"{dtype}: max |vLLM - policy| log-prob: {err:.2e}")
        assert err < atol
        budget = cfg.protocol.think_budget
        assert all(t.think_tokens <= budget for tr in trajs for t in tr.turns)
        with torch.no_grad():  # new weights: the engine must now sample from the perturbed policy
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        engine.update_weights(model.state_dict().items())
        trajs, _ = run_rollouts(rows[:1], pool=pool, engine=engine, encoder=encoder, cfg=cfg)
        err = _max_logprob_error(model, trajs[0])
        print(f"{dtype}: after update_weights, max |vLLM - policy| log-prob: {err:.2e}")
        assert err < atol


def test_vllm_engine_rollout_of_a_3b_shaped_model(tmp_path):
    from streamreason.rollout.vllm_engine import VLLMEngine

    model_dir = build_reference_config(tmp_path / "qwen2_5_vl_3b", "3b")
    rows, _ = read_rows(synthesize(tmp_path / "data", n=2, seed=0, min_seconds=20, max_seconds=20))
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    env = EnvConfig(min_pixels=128 * 28 * 28, max_pixels=192 * 28 * 28)  # ThinkStream's budget
    cfg = RolloutConfig(env=env, memory=MemoryConfig(window_chunks=20), group_size=8,
                        protocol=ProtocolConfig(think_budget=20, max_new_tokens=30))  # fmt: skip
    engine = VLLMEngine(model_dir, processor.tokenizer, max_videos=20, dtype="bfloat16", load_format="dummy",
                        gpu_memory_utilization=0.4, enforce_eager=True, max_model_len=16384)  # fmt: skip
    with EnvPool(env, in_process=True) as pool:
        t0 = time.perf_counter()
        trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg)
        dt = time.perf_counter() - t0
    turns = sum(len(t.turns) for t in trajs)
    tokens = sum(len(x.response_ids) for t in trajs for x in t.turns)
    ctx = max(x.memory.context_tokens for t in trajs for x in t.turns)
    print(f"vLLM 3B-shaped (dummy weights) rollout: {len(trajs)} trajectories, {turns} turns, {tokens} tokens "
          f"in {dt:.1f} s; longest context {ctx} tokens; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (torch)")  # fmt: skip
    assert not failures and len(trajs) == 16 and all(len(t.turns) == 20 for t in trajs)
    assert all(np.isfinite(x.logprobs).all() for t in trajs for x in t.turns)
