"""A checkpoint whose tokenizer lacks the protocol tags, as a base Qwen2.5-VL's does.

Its byte-level BPE (Qwen2's normalizer and pre-tokenizer, trained with the `tokenizers` library
on the tiny corpus, ``build_tokenizer(protocol_tokens=False)``) splits the tags into pieces that
merge with their neighbours: ``</think><silent>`` is ``'</' 'think' '><' 'silent' '>'``. Loading
adds the tags as single tokens (ThinkStream's ``add_tokens``), resizes the vocabulary, and from
then on the think budget, the think counts and the SFT decision labels find them by id.
"""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import synthesize
from streamreason.errors import ConfigError
from streamreason.modeling import (
    PROTOCOL_TOKENS,
    add_protocol_tokens_to_checkpoint,
    build_tiny_model,
    build_tokenizer,
    check_protocol_tokens,
    load_policy,
    require_protocol_tokens,
)
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.engine import GenerationRequest, SamplingConfig, TransformersEngine
from streamreason.rollout.loop import RolloutConfig, count_think_tokens, think_budget
from streamreason.rollout.memory import MemoryConfig, VisualWindowMemory
from streamreason.rollout.protocol import ProtocolConfig, get_protocol
from streamreason.types import read_rows


@pytest.fixture(scope="module")
def bare_dir(tmp_path_factory):
    """A tiny checkpoint without the tags and no spare embedding row for them."""
    return build_tiny_model(tmp_path_factory.mktemp("bare") / "model", protocol_tokens=False)


@pytest.fixture(scope="module")
def tagged(bare_dir):
    """``(model, processor)`` of the bare checkpoint after load_policy added the tags."""
    return load_policy(bare_dir)


def _pieces(tok, text):
    return tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))


def test_the_bare_bpe_merges_the_tags_with_their_neighbours():
    tok = build_tokenizer(protocol_tokens=False)
    assert _pieces(tok, "</think>") == ["</", "think", ">"]
    assert _pieces(tok, "x</think><silent>") == ["x", "</", "think", "><", "silent", ">"]
    with pytest.raises(ConfigError, match="has no token '<think>'"):
        check_protocol_tokens(tok)


def test_a_checkpoint_without_the_tags_is_refused_by_vllm(bare_dir):
    from streamreason.rollout.vllm_engine import VLLMEngine

    with pytest.raises(ConfigError, match="has no token .*add_protocol_tokens_to_checkpoint"):
        require_protocol_tokens(bare_dir)
    with pytest.raises(ConfigError, match=str(bare_dir)):  # before vLLM (or CUDA) is touched
        VLLMEngine(bare_dir, AutoTokenizer.from_pretrained(bare_dir))


def test_loading_adds_single_token_tags_and_resizes_the_vocabulary(bare_dir, tagged):
    bare = AutoTokenizer.from_pretrained(bare_dir)
    model, processor = tagged
    tok = processor.tokenizer
    assert len(tok) == len(bare) + len(PROTOCOL_TOKENS)
    # ThinkStream's order (thinkstream/trainer/sft.py init_processor), <standby> last
    added = ["<silent>", "<response>", "<think>", "</think>", "<standby>"]
    assert [tok.convert_tokens_to_ids(t) for t in added] == list(range(len(bare), len(tok)))
    assert _pieces(tok, "x</think><silent>") == ["x", "</think>", "<silent>"]
    assert tok.decode(tok.encode("<think>a</think><response>b", add_special_tokens=False)) == (
        "<think>a</think><response>b"
    )
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) == model.config.text_config.vocab_size
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # tied: one matrix resized
    old = emb[: len(bare)]
    # transformers' mean_resizing: new rows at the old rows' mean (covariance scaled by 1e-9)
    assert torch.allclose(emb[len(bare) :], old.mean(0).expand(len(PROTOCOL_TOKENS), -1), atol=1e-3)
    rng = torch.get_rng_state()
    again, _ = load_policy(bare_dir)
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is untouched
    assert torch.equal(again.get_input_embeddings().weight, emb)  # every process builds the same rows


def test_spare_rows_are_used_as_they_are(bare_dir, tmp_path):
    """Qwen2.5-VL has 151,936 rows for 151,665 tokens: ThinkStream adds the tags without resizing."""
    model, processor = load_policy(bare_dir)
    model.resize_token_embeddings(len(processor.tokenizer) + 8)  # room beyond the tags
    spare = model.get_input_embeddings().weight.detach().clone()
    bare = AutoProcessor.from_pretrained(bare_dir)
    model.save_pretrained(tmp_path)
    bare.save_pretrained(tmp_path)  # the tokenizer without the tags
    loaded, proc = load_policy(tmp_path)
    assert len(proc.tokenizer) == len(bare.tokenizer) + len(PROTOCOL_TOKENS)
    assert torch.equal(loaded.get_input_embeddings().weight, spare)


def test_exported_checkpoints_keep_the_tags(bare_dir, tagged, tmp_path):
    """What the trainers write (Learner.export: model + processor) loads with the same vocabulary,
    in vLLM's check too; a prepared copy of the bare folder as well."""
    from streamreason.rl.grpo import GRPOConfig
    from streamreason.rl.learner import Learner, OptimConfig

    model, processor = tagged
    Learner(model, OptimConfig(), GRPOConfig(), 1, processor.tokenizer.pad_token_id).export(
        tmp_path / "final", processor
    )
    prepared = add_protocol_tokens_to_checkpoint(bare_dir, tmp_path / "prepared")
    for folder in (tmp_path / "final", prepared):
        require_protocol_tokens(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok.get_vocab() == processor.tokenizer.get_vocab()
        reloaded, _ = load_policy(folder)
        assert torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


def _request(encoder):
    mem = VisualWindowMemory(MemoryConfig(window_chunks=2), encoder.system_ids)
    frames = np.random.default_rng(0).integers(0, 255, (2, 56, 56, 3), dtype=np.uint8)
    head, tail = encoder.user_turn(0.0, 1.0, [])
    mem.add_chunk(head, encoder.video(frames, fps=2.0), tail)
    p = mem.prompt()
    return GenerationRequest(p.ids, p.mm_token_type_ids, list(p.videos))


@pytest.mark.parametrize(
    "counts, end, inside", [("span", False, 4), ("generated", False, 3), ("generated", True, 3)]
)
def test_think_budget_forces_one_close_tag_and_counts_right(tagged, counts, end, inside):
    """The policy opens <think> and then would write "red" forever: the budget (4) forces
    exactly one </think> id, after 4 think tokens (span) or 4 generated ones (ThinkStream's
    rule: <think> + 3), and the count of think tokens says so; with the forced end of turn the
    12th token is <|im_end|>."""
    model, processor = tagged
    tok = processor.tokenizer
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    (red,) = encoder.text("red")
    open_id, close_id = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    first, later = torch.zeros(len(tok)), torch.zeros(len(tok))
    first[open_id], later[red] = 50.0, 50.0

    steps = []

    def bias(module, inputs, out):  # one forward per generated token: the first writes <think>
        steps.append(None)
        return out + (first if len(steps) == 1 else later)

    cfg = RolloutConfig(protocol=ProtocolConfig(think_budget=4, think_budget_counts=counts,
                                                force_end_of_turn=end, max_new_tokens=12))  # fmt: skip
    budget = think_budget(encoder, cfg)
    assert budget.open_ids == (open_id,) and budget.close_ids == (close_id,)
    hook = model.lm_head.register_forward_hook(bias)
    try:
        (gen,) = TransformersEngine(model, tok).generate(
            [_request(encoder)], SamplingConfig(temperature=0.0), 12, budget
        )
    finally:
        hook.remove()
    ids = gen.token_ids
    assert ids[: inside + 2] == [open_id] + [red] * inside + [close_id]
    assert ids.count(close_id) == 1 and gen.forced.count(True) == 1 + end
    assert count_think_tokens(ids, budget.open_ids, budget.close_ids) == inside
    assert len(ids) == 12 and (ids[-1] == encoder.end_of_turn_id) == end
    assert gen.finish_reason == ("stop" if end else "length")


def test_sft_decision_labels_find_the_tags(tagged, tmp_path):
    """Gold turns through the real loop (rl/sft.py): one label per turn, on the tag's own id."""
    from streamreason.rl.sft import DECISIONS, sft_rows

    model, processor = tagged
    tok = processor.tokenizer
    encoder = ChatEncoder(processor, get_protocol("watch_think_speak"))
    rows, _ = read_rows(synthesize(tmp_path, n=1, seed=0, min_seconds=5, max_seconds=5))
    env = EnvConfig(min_pixels=56 * 56, max_pixels=112 * 112)
    cfg = RolloutConfig(env=env, memory=MemoryConfig(window_chunks=8), group_size=1)
    with EnvPool(env, in_process=True) as pool:
        train, failures = sft_rows(rows, pool=pool, encoder=encoder, cfg=cfg)
    assert not failures
    answers = sum(q.answer is not None for q in rows[0].queries)
    labels = np.concatenate([r.decision for r in train])
    ids = np.concatenate([r.input_ids for r in train])
    turns = sum(r.turns[1] - r.turns[0] + 1 for r in train)
    assert (labels >= 0).sum() == turns and (labels == 1).sum() == answers >= 1
    for c, name in enumerate(DECISIONS[:2]):
        assert (ids[labels == c] == tok.convert_tokens_to_ids(f"<{name}>")).all()
