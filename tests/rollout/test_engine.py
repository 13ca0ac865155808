"""The transformers engine: batched turns, exact rollout log-probs, the think budget."""

import numpy as np
import pytest
import torch

from streamreason.errors import ConfigError
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.engine import (
    Engine,
    Generation,
    GenerationRequest,
    SamplingConfig,
    ThinkBudget,
    TransformersEngine,
)
from streamreason.rollout.memory import MemoryConfig, VisualWindowMemory
from streamreason.rollout.protocol import get_protocol
from streamreason.types import Query


@pytest.fixture(scope="module")
def stack(tiny_policy):
    model, processor = tiny_policy
    return model, processor, ChatEncoder(processor, get_protocol("watch_think_speak"))


def _request(encoder, chunks=2, seed=0):
    mem = VisualWindowMemory(MemoryConfig(window_chunks=4), encoder.system_ids)
    rng = np.random.default_rng(seed)
    for k in range(chunks):
        video = encoder.video(rng.integers(0, 255, (2, 112, 112, 3), dtype=np.uint8), fps=2.0)
        head, tail = encoder.user_turn(
            k, k + 1.0, [Query("Tell me when a red square appears.", 0.0)] if k == 0 else []
        )
        mem.add_chunk(head, video, tail)
        mem.prompt()
        mem.add_reply(encoder.text("<think>x</think><silent><|im_end|>\n"))
    mem.chunks[-1].reply = None
    p = mem.prompt()
    return GenerationRequest(p.ids, p.mm_token_type_ids, list(p.videos))


def test_rollout_logprobs_equal_a_forward_pass(stack):
    model, processor, encoder = stack
    engine = TransformersEngine(model, processor.tokenizer, max_batch_size=3, seed=0)
    requests = [_request(encoder, chunks=c, seed=c) for c in (1, 2, 3, 2)]  # ragged lengths, 2 micro-batches
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, top_k=20)
    gens = engine.generate(requests, sampling, max_new_tokens=12)
    assert len(gens) == 4
    worst = 0.0
    for req, gen in zip(requests, gens):
        assert 1 <= len(gen.token_ids) == len(gen.logprobs) == len(gen.forced) <= 12
        assert gen.finish_reason == ("stop" if gen.token_ids[-1] == encoder.end_of_turn_id else "length")
        ids = torch.tensor([req.prompt_ids + gen.token_ids])
        types = torch.tensor([req.mm_token_type_ids + [0] * len(gen.token_ids)])
        with torch.no_grad():
            logits = model(
                input_ids=ids, mm_token_type_ids=types, attention_mask=torch.ones_like(ids), **req.mm_inputs
            ).logits
        p = len(req.prompt_ids)
        lp = torch.log_softmax(logits[0, p - 1 : -1] / sampling.temperature, -1)
        ref = lp.gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
        worst = max(worst, (ref - torch.tensor(gen.logprobs)).abs().max().item())
    assert worst < 1e-4, worst


def test_sampling_differs_across_the_group_and_greedy_is_deterministic(stack):
    model, processor, encoder = stack
    engine = TransformersEngine(model, processor.tokenizer, seed=0)
    req = _request(encoder)
    sampled = engine.generate(
        [req] * 6, SamplingConfig(temperature=1.0, top_p=1.0, top_k=0), max_new_tokens=8
    )
    assert len({tuple(g.token_ids) for g in sampled}) > 1
    greedy = engine.generate([req] * 2, SamplingConfig(temperature=0.0), max_new_tokens=8)
    assert greedy[0].token_ids == greedy[1].token_ids


def test_think_budget_forces_the_close_tag(stack):
    model, processor, encoder = stack
    tok = processor.tokenizer
    open_id, close_id = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[open_id] = 50.0  # the model now always wants to write <think>
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        engine = TransformersEngine(model, tok)
        budget = ThinkBudget((open_id,), (close_id,), budget=3)
        (gen,) = engine.generate([_request(encoder)], SamplingConfig(temperature=0.0), 8, budget)
    finally:
        hook.remove()
    assert gen.token_ids == [open_id] * 4 + [close_id] + [open_id] * 3
    assert gen.forced == [False] * 4 + [True] + [False] * 3
    assert gen.logprobs[4] < -20  # the policy itself would not have written it
    assert gen.finish_reason == "length"


def test_think_budget_with_a_multi_token_close_tag():
    budget, n = ThinkBudget((7,), (8, 9), budget=2), 30
    assert budget.next_forced([7, 1], n) is None
    assert budget.next_forced([7, 1, 2], n) == 8
    assert budget.next_forced([7, 1, 2, 8], n) == 9
    assert budget.next_forced([7, 1, 2, 8, 9], n) is None
    assert budget.forced([7, 1, 2, 8, 9, 3], n) == [False, False, False, True, True, False]
    assert ThinkBudget((7,), (8,), budget=0).next_forced([7, 1, 2, 3], n) is None
    assert budget.next_forced([1, 2, 3, 4], n) is None  # no think span opened


def test_think_budget_counts_span_or_every_generated_token():
    """span: `budget` tokens inside the span; generated (ThinkStream's think_budget_sample):
    the budget counts <think> too, so 20 leaves 19 inside, and applies with no <think> at all."""
    open_, close, n = 1, 2, 30
    turn = [open_] + [5] * 25
    span = ThinkBudget((open_,), (close,), budget=20)
    generated = ThinkBudget((open_,), (close,), budget=20, counts="generated")
    assert span.cut(turn, n) == 21 and generated.cut(turn, n) == 20
    assert generated.forced(turn[:20] + [close], n) == [False] * 20 + [True]
    assert span.cut([5] * 25, n) is None and generated.cut([5] * 25, n) == 20
    assert generated.next_forced([open_, 5, close] + [5] * 20, n) is None  # closed in time
    with pytest.raises(ConfigError, match="counts"):
        ThinkBudget((open_,), (close,), budget=20, counts="tokens")


def test_forced_end_of_turn_at_the_last_position():
    """ThinkStream forces eos at step max_new_tokens - 1 (StreamingInferenceEngine.generate)."""
    budget, n = ThinkBudget((1,), (2,), budget=20, counts="generated", end_id=9), 30
    assert budget.next_forced([1, 2] + [5] * 26, n) is None  # position 28: sampled
    assert budget.next_forced([1] + [5] * 19 + [2] + [5] * 8, n) == 9
    assert budget.forced([1] + [5] * 19 + [2] + [5] * 8 + [9], n) == [False] * 20 + [True] + [False] * 8 + [
        True
    ]
    assert ThinkBudget((1,), (2,), budget=0, end_id=9).next_forced([5] * 4, 5) == 9
    assert not ThinkBudget((1,), (2,), budget=0).active


def test_thinkstream_rule_forces_one_close_tag_and_the_end_of_turn(stack):
    """counts=generated, end forced: budget 3 gives <think> + 2 inside, then </think>; the
    8th and last token is the end of turn, so the cut turn still ends."""
    model, processor, encoder = stack
    tok = processor.tokenizer
    open_id, close_id = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[open_id] = 50.0
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        budget = ThinkBudget((open_id,), (close_id,), 3, counts="generated", end_id=encoder.end_of_turn_id)
        (gen,) = TransformersEngine(model, tok).generate(
            [_request(encoder)], SamplingConfig(temperature=0.0), 8, budget
        )
    finally:
        hook.remove()
    assert gen.token_ids == [open_id] * 3 + [close_id] + [open_id] * 3 + [encoder.end_of_turn_id]
    assert gen.forced == [False] * 3 + [True] + [False] * 3 + [True]
    assert gen.finish_reason == "stop"


def test_vision_placeholders_are_never_sampled(stack):
    model, processor, encoder = stack
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|video_pad|>")
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[pad] = 50.0  # a placeholder in a reply would later be read as a slot for video features
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        gens = TransformersEngine(model, tok, seed=0).generate([_request(encoder)] * 4, SamplingConfig(), 6)
    finally:
        hook.remove()
    assert all(pad not in g.token_ids for g in gens)


def test_finish_turn_cuts_a_free_sample_where_the_budget_forces():
    """Engines that sample freely (vLLM, verl's server) cut, force the close tag, resume."""
    from streamreason.rollout.engine import BudgetCut, finish_turn

    budget, end = ThinkBudget((1,), (2, 3), budget=3), [9]
    free = [1, 5, 6, 7, 8, 8, 9]  # <think> then 5 think tokens: the budget allows 3
    cut = finish_turn(free, [-0.5] * 7, end, budget, max_new_tokens=10)
    assert isinstance(cut, BudgetCut)
    assert cut.token_ids == [1, 5, 6, 7, 2, 3] and cut.forced == [False] * 4 + [True] * 2
    assert cut.logprobs == [-0.5] * 4 + [0.0] * 2
    gen = finish_turn([4, 9], [-0.1, -0.2], end, budget, max_new_tokens=10, resumed=cut)
    assert gen.token_ids == [1, 5, 6, 7, 2, 3, 4, 9] and gen.finish_reason == "stop"
    assert gen.forced == budget.forced(gen.token_ids, 10)  # what forcing step by step would have marked
    within = finish_turn([1, 5, 2, 3, 4, 9], [-0.3] * 6, end, budget, max_new_tokens=10)
    assert within.token_ids == [1, 5, 2, 3, 4, 9] and not any(within.forced)
    short = finish_turn(free, [-0.5] * 7, end, budget, max_new_tokens=5)  # no room after the close tag
    assert short.token_ids == [1, 5, 6, 7, 2] and short.finish_reason == "length"


def test_finish_turn_forces_the_end_of_turn_in_a_free_sample():
    """The last token of a free sample that ran to max_new_tokens becomes the forced end of turn,
    also in the continuation after a think-budget cut: the turn ends, as ThinkStream's do."""
    from streamreason.rollout.engine import BudgetCut, finish_turn

    budget, end, n = ThinkBudget((1,), (2,), budget=3, counts="generated", end_id=9), [9], 8
    cut = finish_turn([1, 5, 6, 7, 7, 7, 7, 7], [-0.5] * 8, end, budget, n)
    assert isinstance(cut, BudgetCut) and cut.token_ids == [1, 5, 6, 2]
    gen = finish_turn([4, 4, 4, 4], [-0.1] * 4, end, budget, n, resumed=cut)
    assert gen.token_ids == [1, 5, 6, 2, 4, 4, 4, 9] and gen.finish_reason == "stop"
    assert gen.forced == [False] * 3 + [True] + [False] * 3 + [True] == budget.forced(gen.token_ids, n)
    assert gen.logprobs[-1] == 0.0
    early = finish_turn([1, 5, 2, 4, 9], [-0.1] * 5, end, budget, n)  # ended by itself: nothing forced
    assert early.token_ids == [1, 5, 2, 4, 9] and not any(early.forced) and early.finish_reason == "stop"


def test_vllm_engine_refuses_chunks_whose_timing_vllm_would_change(stack):
    """vLLM drops Qwen2.5-VL's video fps: chunks of one temporal patch are exact, longer ones refused."""
    from streamreason.errors import ConfigError
    from streamreason.rollout.vllm_engine import check_video_timing

    *_, encoder = stack
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    two, four = encoder.video(frames[:2], fps=2.0), encoder.video(frames, fps=4.0)
    check_video_timing([two], "qwen2_5_vl")
    check_video_timing([four], "qwen3_vl")  # vLLM passes Qwen3-VL the metadata
    with pytest.raises(ConfigError, match="frames_per_chunk=2"):
        check_video_timing([two, four], "qwen2_5_vl")


class _Scripted(Engine):
    """An engine that only generates (as tests and scripted teachers write them)."""

    def generate(self, requests, sampling, max_new_tokens, think_budget=None):
        return [Generation([1], [0.0], [False], "length") for _ in requests]


def abilities(engine) -> tuple[bool, bool, bool]:
    return engine.updates_weights, engine.shares_policy, engine.reports_prefix_cache


def test_engines_declare_their_abilities(stack):
    """Callers read the abilities instead of probing: the transformers engine shares the learner's
    module (``model``, swapped by ``set_policy``); vLLM takes weights and reports cache hits; an
    engine that only generates declares nothing, and asking it for more fails naming it."""
    from streamreason.rollout.vllm_engine import VLLMEngine

    model, processor, _ = stack
    hf = TransformersEngine(model, processor.tokenizer)
    assert abilities(hf) == (False, True, False) and hf.model is model
    wrapped = torch.nn.Module()
    hf.set_policy(wrapped)
    assert hf.model is wrapped
    assert abilities(VLLMEngine) == (True, False, True)
    scripted = _Scripted()
    assert abilities(scripted) == (False, False, False)
    scripted.reset_prefix_cache()  # nothing cached: nothing to drop
    with pytest.raises(NotImplementedError, match="_Scripted cannot load new weights"):
        scripted.update_weights([("w", torch.zeros(1))])
    with pytest.raises(NotImplementedError, match="TransformersEngine cannot load new weights"):
        hf.update_weights(model.state_dict().items())
    with pytest.raises(NotImplementedError, match="_Scripted holds no policy module"):
        scripted.set_policy(model)
