"""GPU checks of the rollout stack (``pytest -m gpu``; skipped without CUDA)."""

import numpy as np
import pytest
import torch

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import synthesize
from streamreason.modeling import load_policy
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.engine import TransformersEngine
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import get_protocol
from streamreason.types import read_rows

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-3), (torch.bfloat16, 0.1)])
def test_transformers_engine_rollout_on_cuda(tiny_model_dir, tmp_path, dtype, atol):
    rows, _ = read_rows(synthesize(tmp_path, n=2, seed=0, min_seconds=6, max_seconds=6))
    model, processor = load_policy(tiny_model_dir, dtype=dtype, device="cuda")
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    env = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112)
    cfg = RolloutConfig(env=env, memory=MemoryConfig(window_chunks=3), group_size=4)
    with EnvPool(env, num_workers=2) as pool:  # real Ray actors
        trajs, failures = run_rollouts(
            rows, pool=pool, engine=TransformersEngine(model, processor.tokenizer), encoder=encoder, cfg=cfg
        )
    assert not failures and len(trajs) == 8 and all(len(t.turns) == 6 for t in trajs)
    traj = trajs[0]
    turn = traj.turns[-1]
    inputs = {k: v.to("cuda") for k, v in traj.model_inputs(len(traj.turns) - 1).items()}
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    p = len(turn.prompt_ids)
    ids = torch.from_numpy(turn.response_ids.astype(np.int64)).cuda()
    ref = torch.log_softmax(logits[p - 1 : -1], -1).gather(-1, ids[:, None])[:, 0].cpu()
    assert (ref - torch.from_numpy(turn.logprobs)).abs().max() < atol


def test_vllm_loads_the_tiny_model_and_reads_video(tiny_model_dir):
    vllm = pytest.importorskip("vllm")
    llm = vllm.LLM(model=str(tiny_model_dir), enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=4096,
                   limit_mm_per_prompt={"video": 1})  # fmt: skip
    frames = np.random.default_rng(0).integers(0, 255, (4, 112, 112, 3), dtype=np.uint8)
    prompt = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n"
              "<|im_start|>assistant\n")  # fmt: skip
    params = vllm.SamplingParams(max_tokens=16, min_tokens=16, ignore_eos=True, logprobs=0, seed=0)
    (out,) = llm.generate({"prompt": prompt, "multi_modal_data": {"video": frames}}, params)
    completion = out.outputs[0]
    assert len(completion.token_ids) == 16
    assert all(np.isfinite(next(iter(lp.values())).logprob) for lp in completion.logprobs)
