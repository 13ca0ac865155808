"""``memory.eviction=mask`` on vLLM (``pytest -m gpu``): the span-mask plugin in vLLM's FlexAttention.

The tiny model in fp32 on 60 s streams, W=4, B=1 (56 evictions per trajectory): vLLM's rollout
log-probs equal the learner's span-masked forward over one row per trajectory (the forward the
transformers engine generates with) within the tolerance of the rewrite test
(``test_gpu_vllm.py``), the same forward without the mask does not, and the prefix cache serves
at least 95 % of the prompt tokens (each turn encodes only its new chunk and the last reply).
"""

import time

import numpy as np
import pytest
import torch

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import synthesize
from streamreason.modeling import load_policy
from streamreason.rl.grpo import GRPOConfig
from streamreason.rl.learner import Learner, OptimConfig
from streamreason.rl.rows import build_rows
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig
from streamreason.rollout.protocol import ProtocolConfig, get_protocol
from streamreason.types import read_rows

pytestmark = pytest.mark.gpu
pytest.importorskip("vllm")


def _worst(rows, logprobs) -> float:
    return float(max(np.abs(lp - r.old_logprobs)[r.loss_mask > 0].max() for r, lp in zip(rows, logprobs)))


def test_vllm_span_mask_matches_the_learner_with_the_prefix_cache_on(tiny_model_dir, tmp_path):
    from streamreason.rollout.vllm_engine import VLLMEngine

    rows, _ = read_rows(synthesize(tmp_path, n=2, seed=0, min_seconds=60, max_seconds=60))
    model, processor = load_policy(tiny_model_dir, dtype=torch.float32, device="cuda")
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    env = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112)
    memory = MemoryConfig(window_chunks=4, evict_block=1, eviction="mask")
    cfg = RolloutConfig(
        env=env, memory=memory, group_size=4, protocol=ProtocolConfig(think_budget=4, max_new_tokens=12)
    )
    engine = VLLMEngine(tiny_model_dir, processor.tokenizer, max_videos=memory.max_videos(64), dtype="float32",
                        gpu_memory_utilization=0.15, enforce_eager=True, max_model_len=16384,
                        span_masks=True, cache_salt=memory.cache_salt)  # fmt: skip
    with EnvPool(env, in_process=True) as pool:
        t0 = time.perf_counter()
        trajs, failures = run_rollouts(rows, pool=pool, engine=engine, encoder=encoder, cfg=cfg)
        seconds = time.perf_counter() - t0
    assert not failures and len(trajs) == 8 and all(len(t.turns) == 60 for t in trajs)
    turns = [x for t in trajs for x in t.turns]
    cached = sum(x.cached_prompt_tokens for x in turns) / sum(len(x.prompt_ids) for x in turns)
    train = build_rows(trajs[:3])
    assert len(train) == 3 and all(len(r.masked_spans) == 56 for r in train)  # one row, 56 evictions each
    learner = Learner(model, OptimConfig(), GRPOConfig(micro_batch_rows=1), total_steps=1,
                      pad_id=processor.tokenizer.pad_token_id)  # fmt: skip
    worst = _worst(train, learner.logprobs(train))
    unmasked = [r.__class__(**{**r.__dict__, "masked_spans": []}) for r in train]
    leak = _worst(unmasked, learner.logprobs(unmasked))
    print(f"vLLM span mask: {len(turns)} turns in {seconds:.1f} s; max |vLLM - learner| log-prob {worst:.2e} "
          f"(without the mask {leak:.2e}); prefix-cached {100 * cached:.1f} % of prompt tokens")  # fmt: skip
    assert worst < 2e-3 < leak
    assert cached >= 0.95
