"""Policy models: the embedded tiny default model, and loading any Qwen-VL checkpoint.

``build_tiny_model(out_dir)`` writes a complete Hugging Face checkpoint directory: a
Qwen2.5-VL-architecture model with random weights (about 1 M parameters), a small byte-level
BPE tokenizer carrying Qwen's special tokens and the watch-think-speak protocol tags, a ChatML
chat template, and image/video processor configs. It loads with
``AutoModelForImageTextToText`` / ``AutoProcessor`` (and by vLLM), so it stands in for a real
Qwen2-VL / Qwen2.5-VL / Qwen3-VL directory everywhere. Building is deterministic: the same
arguments give byte-identical weights and tokenizer files.

A real Qwen2.5-VL tokenizer has no protocol tags: standalone ``</think>`` is
``['</', 'think', '>']`` and inside a turn ``</think><silent>`` pre-tokenizes as
``['</', 'think', '><', 'silent', '>']``, so the tag has no fixed ids to force or count.
:func:`load_policy` therefore adds the missing tags as tokens (as ThinkStream does before its SFT)
and checks that each one is a single id in any context (:func:`check_protocol_tokens`); every
checkpoint the trainers write (``Learner.export``: model and processor) carries them.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import torch

# Qwen2-VL's special tokens, in Qwen's id order (tokenizer_config.json of Qwen2.5-VL-*-Instruct).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
# The watch-think-speak tags (rollout/protocol.py) as single, non-special tokens: they decode as
# text, so the parser sees them, and the think budget can force `</think>` in one token.
PROTOCOL_TOKENS = ["<think>", "</think>", "<response>", "<silent>", "<standby>"]
# The order ThinkStream adds them to a base checkpoint's tokenizer (thinkstream/trainer/sft.py,
# init_processor), so a checkpoint prepared here gets ThinkStream's ids; <standby> (streamo) last.
_ADD_ORDER = ["<silent>", "<response>", "<think>", "</think>", "<standby>"]

# ChatML with Qwen-VL's vision placeholders (content items {"type": "video"} / {"type": "image"}).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer_corpus() -> list[str]:
    """Deterministic training text for the tiny BPE: protocol, task vocabulary, numbers."""
    colours = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    shapes = ["square", "circle", "triangle", "squares", "circles", "triangles", "shape", "object"]
    places = ["top", "bottom", "left", "right", "center", "middle", "corner", "moves", "appears",
              "disappears", "visible", "nothing", "new", "still", "now", "so", "far", "many"]  # fmt: skip
    words = [
        "the",
        "a",
        "an",
        "is",
        "are",
        "was",
        "were",
        "what",
        "which",
        "when",
        "where",
        "who",
        "how",
        "many",
        "tell",
        "me",
        "you",
        "it",
        "this",
        "that",
        "of",
        "in",
        "on",
        "at",
        "to",
        "and",
        "or",
        "not",
        "yes",
        "no",
        "answer",
        "question",
        "options",
        "video",
        "chunk",
        "seconds",
        "second",
        "time",
        "frame",
        "see",
        "saw",
        "watch",
        "think",
        "speak",
        "respond",
        "response",
        "silent",
        "wait",
        "until",
        "evidence",
        "appeared",
        "has",
        "have",
        "been",
        "count",
        "colour",
        "color",
        "shape",
        "person",
        "man",
        "woman",
        "car",
        "dog",
        "cat",
        "ball",
        "door",
        "light",
        "turns",
        "green",
        "red",
    ]
    lines = [
        "You are watching a video stream chunk by chunk. After each chunk, think briefly inside "
        "<think></think>, then either answer with <response> followed by your answer, or stay <silent>.",
        "<think>nothing new</think><silent>",
        "<think>red square appears top left</think><response>yes",
        "<think>2 shapes: red square, blue circle</think><response>B",
    ]
    for c, s, p in itertools.product(colours, shapes, places):
        lines.append(f"Tell me when a {c} {s} appears. <think>{c} {s} {p}</think>")
        lines.append(f"How many {c} {s} have appeared so far? What colour is the {s} now?")
    lines.append(" ".join(words) * 4)
    lines.append(" ".join(f"{i} {i}.0s {i}.5s [{i}.0s-{i + 1}.0s]" for i in range(200)))
    lines.append("A. red B. green C. blue D. yellow E. none (A) (B) (C) (D) (E) A B C D E")
    return lines


def build_tokenizer(vocab_size: int = 1024, protocol_tokens: bool = True):
    """A byte-level BPE tokenizer in Qwen2's format, trained on a fixed corpus.

    Args:
        vocab_size: target size of the BPE vocabulary before special and protocol tokens.
        protocol_tokens: add the protocol tags as tokens. Without them the tokenizer is in a
            base Qwen2.5-VL tokenizer's situation: the tags are BPE pieces that merge with
            their neighbours (``</think><silent>`` → ``'</' 'think' '><' 'silent' '>'``).

    Returns:
        ``transformers.Qwen2Tokenizer`` with Qwen's special tokens (eos ``<|im_end|>``, pad
        ``<|endoftext|>``), the protocol tags as added tokens (when ``protocol_tokens``) and a
        ChatML chat template.
    """
    from tokenizers import Tokenizer, models, trainers
    from transformers import Qwen2Tokenizer

    proto = Qwen2Tokenizer()  # borrow Qwen2's exact normalizer, pre-tokenizer and decoder
    tok = Tokenizer(models.BPE())
    tok.normalizer = proto.backend_tokenizer.normalizer
    tok.pre_tokenizer = proto.backend_tokenizer.pre_tokenizer
    tok.decoder = proto.backend_tokenizer.decoder
    from tokenizers.pre_tokenizers import ByteLevel

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[QWEN_SPECIAL_TOKENS[0]],
        initial_alphabet=ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, extra_special_tokens=QWEN_SPECIAL_TOKENS[1:],
    )  # fmt: skip
    if protocol_tokens:
        tokenizer.add_tokens(PROTOCOL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


TINY_ARCHS = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "qwen2_5_vl",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    protocol_tokens: bool = True,
) -> Path:
    """Write a tiny random-weight policy to ``out_dir`` (deterministic for a seed).

    Args:
        out_dir: destination folder (created; existing files are overwritten).
        arch: ``qwen2_5_vl`` (the default model), ``qwen2_vl`` or ``qwen3_vl``: the same
            architecture and processor classes as the real checkpoints of that family.
        seed: weights seed.
        hidden_size: language model width (4 heads, 2 KV heads, MLP 2x width).
        num_layers: language model layers.
        vision_hidden_size, vision_depth: vision tower width and blocks (the family's patch
            size: 14 for Qwen2/2.5-VL, 16 for Qwen3-VL; merge 2; temporal patch 2).
        min_pixels, max_pixels: the processors' default per-frame pixel budget.
        protocol_tokens: give the tokenizer the protocol tags (False: a checkpoint that lacks
            them, as a base Qwen2.5-VL does, with no spare embedding row for them).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: unknown ``arch``.
    """

    if arch not in TINY_ARCHS:
        raise ValueError(f"arch must be one of {TINY_ARCHS}, got {arch!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(protocol_tokens=protocol_tokens)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 4
    # mrope splits the rotary half-dim into (temporal, height, width) sections, as 16:24:24 in Qwen2.5-VL.
    half = hidden_size // heads // 2
    t_sec = half // 4
    mrope = [t_sec, (half - t_sec) // 2, half - t_sec - (half - t_sec) // 2]
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=2,
        max_position_embeddings=32768, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
    )  # fmt: skip
    vision = dict(depth=vision_depth, num_heads=4, spatial_merge_size=2, temporal_patch_size=2)
    if arch == "qwen2_vl":
        vision.update(embed_dim=vision_hidden_size, hidden_size=hidden_size, mlp_ratio=2, patch_size=14)
    elif arch == "qwen2_5_vl":
        vision.update(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, out_hidden_size=hidden_size,
            patch_size=14, tokens_per_second=2, window_size=56, fullatt_block_indexes=[vision_depth - 1],
        )  # fmt: skip
    else:
        text["head_dim"] = hidden_size // heads
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(
            hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, out_hidden_size=hidden_size,
            patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0],
        )  # fmt: skip
    return _save_model(out_dir, arch, text, vision, tokenizer, seed, min_pixels, max_pixels, weights=True)


def _save_model(
    out_dir: Path, arch, text: dict, vision: dict, tokenizer, seed, min_pixels, max_pixels, weights
):
    """Write config, processor and (when ``weights``) random weights of a Qwen-VL model."""
    import transformers as tf

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    prefix = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[arch]
    config = getattr(tf, f"{prefix}Config")(
        text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    generation = tf.GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                     pad_token_id=ids["<|endoftext|>"])  # fmt: skip
    if weights:
        torch.manual_seed(seed)
        model = getattr(tf, f"{prefix}ForConditionalGeneration")(config).eval()
        model.generation_config = generation
        model.save_pretrained(out_dir)
    else:
        config.architectures = [f"{prefix}ForConditionalGeneration"]  # what engines dispatch on
        config.save_pretrained(out_dir)
        generation.save_pretrained(out_dir)
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    patch = vision["patch_size"]
    video_processor = tf.Qwen3VLVideoProcessor if arch == "qwen3_vl" else tf.Qwen2VLVideoProcessor
    processor = getattr(tf, f"{prefix}Processor")(
        image_processor=tf.Qwen2VLImageProcessor(size=dict(size), patch_size=patch),
        video_processor=video_processor(size=dict(size), patch_size=patch, do_sample_frames=False),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    processor.save_pretrained(out_dir)
    return out_dir


# Published Qwen2.5-VL-{3B,7B}-Instruct shapes (their config.json), for speed and memory runs
# with random weights (vLLM ``load_format="dummy"``).
REFERENCE_SIZES = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip


def build_reference_config(out_dir: str | Path, size: str = "3b", weights: bool = False) -> Path:
    """Write a Qwen2.5-VL-3B or -7B-shaped checkpoint folder: the published config, this
    project's tokenizer (the Qwen special tokens at their ids' roles) and a processor with
    ThinkStream's pixel budget (128–192 × 28² per frame).

    Args:
        out_dir: destination folder.
        size: ``3b`` or ``7b``.
        weights: also write random weights (GBs; without them only engines that build
            dummy weights, such as vLLM's ``load_format="dummy"``, can load the folder).

    Raises:
        ValueError: unknown size.
    """
    if size not in REFERENCE_SIZES:
        raise ValueError(f"size must be one of {sorted(REFERENCE_SIZES)}, got {size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(
        REFERENCE_SIZES[size], max_position_embeddings=128000, rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )  # fmt: skip
    vision = dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=text["hidden_size"],
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
    )  # fmt: skip
    return _save_model(
        out_dir, "qwen2_5_vl", text, vision, tokenizer, 0, 128 * 28 * 28, 192 * 28 * 28, weights
    )


def attention_backend(span_masks: bool = False) -> str:
    """``"flash_attention_2"`` when flash-attn is importable and CUDA is up, else ``"sdpa"``;
    always ``"sdpa"`` with ``span_masks`` (``memory.eviction=mask``: FlashAttention takes no
    arbitrary mask; :mod:`streamreason.rollout.attention`)."""
    if not span_masks and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def check_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` as a Path.

    Raises:
        FileNotFoundError: it is not a folder with a ``config.json``.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"model {str(model_dir)!r} has no config.json: pass a Hugging Face checkpoint folder "
            "(build the default one with `streamreason model tiny DIR`)"
        )
    return model_dir


def add_protocol_tokens(model, tokenizer, where: str = "the tokenizer") -> list[str]:
    """Give ``tokenizer`` the protocol tags it lacks, as single tokens, and ``model`` rows for them.

    ThinkStream's rule (``thinkstream/trainer/sft.py``, ``init_processor``): the tags are added
    with ``tokenizer.add_tokens`` (not special, so they decode as text), in the order
    ``<silent> <response> <think> </think>`` (Qwen3-VL already has the think tags, so only
    the first two there); ``<standby>`` (the streamo protocol) comes last. ThinkStream never
    resizes the model: Qwen2.5-VL's embedding has 151,936 rows for 151,665 tokens, so the new
    ids fall on spare rows, used as the checkpoint has them. The same happens here; only a model
    with no spare row left (the tiny built with ``protocol_tokens=False``) is resized, with
    transformers' default ``resize_token_embeddings(mean_resizing=True)`` (new input and output
    rows drawn around the old rows' mean; one matrix when tied), under a fixed seed so that every
    process that loads the checkpoint builds the same rows and the global RNG is left alone.

    Args:
        model: a ``...ForConditionalGeneration`` model, or None (tokenizer only).
        tokenizer: its tokenizer, changed in place.
        where: what to name in errors (the checkpoint folder).

    Returns:
        The tags added (empty when the tokenizer had them all).

    Raises:
        ConfigError: a tag is still not one id in every context after adding
            (:func:`check_protocol_tokens`).
    """
    vocab = tokenizer.get_vocab()
    added = [t for t in _ADD_ORDER if t not in vocab]
    if added:
        tokenizer.add_tokens(added)
    if model is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        cuda = list(range(torch.cuda.device_count()))
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(0)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    check_protocol_tokens(tokenizer, where)
    return added


def check_protocol_tokens(tokenizer, where: str = "the tokenizer") -> None:
    """Check that every protocol tag encodes to its own single id in any context.

    The think budget and the think-token counts find the tags by id (ThinkStream's
    ``think_budget_sample`` compares with ``convert_tokens_to_ids("</think>")``), so each tag
    must be one id standalone, between text and next to every other tag (``</think><silent>``
    is where a BPE merges ``><``).

    Raises:
        ConfigError: naming ``where`` and the first tag that is missing or not a single id.
    """
    from streamreason.errors import ConfigError

    vocab = tokenizer.get_vocab()

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    for tag in PROTOCOL_TOKENS:
        if tag not in vocab:
            raise ConfigError(f"{where} has no token {tag!r}: add the protocol tags (add_protocol_tokens)")
        for other in PROTOCOL_TOKENS:
            if ids(f"x{tag}{other}y") != ids("x") + [vocab[tag], vocab[other]] + ids("y"):
                raise ConfigError(
                    f"{where}: {tag!r} followed by {other!r} does not encode to their two ids "
                    f"({tokenizer.convert_ids_to_tokens(ids(tag + other))}); the tags must be added tokens"
                )


def require_protocol_tokens(model_dir: str | Path) -> None:
    """Check that a checkpoint folder itself holds the protocol tags, for engines that load the
    vocabulary from the folder (vLLM) rather than from :func:`load_policy`.

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder with a ``config.json``.
        ConfigError: its tokenizer lacks a tag or splits one, or its model has fewer vocabulary
            rows than the tokenizer has tokens.
    """
    from transformers import AutoConfig, AutoTokenizer

    from streamreason.errors import ConfigError

    model_dir = check_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fix = (
        "vLLM loads the vocabulary from the folder, so the tags must be saved in it first: train "
        "SFT with engine.name=transformers (its final/ checkpoint has them) or run "
        f"`python -c \"from streamreason.modeling import add_protocol_tokens_to_checkpoint as f; f('{model_dir}', 'OUT')\"`"
    )
    try:
        check_protocol_tokens(tokenizer, f"checkpoint {str(model_dir)!r}")
    except ConfigError as e:
        raise ConfigError(f"{e}; {fix}") from None
    rows = AutoConfig.from_pretrained(model_dir).get_text_config().vocab_size
    if rows < len(tokenizer):
        raise ConfigError(
            f"checkpoint {str(model_dir)!r}: the model has {rows} vocabulary rows but the tokenizer "
            f"{len(tokenizer)} tokens; {fix}"
        )


def load_policy(
    model_dir: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    span_masks: bool = False,
):
    """Load a Qwen-VL checkpoint directory and its processor, with the protocol tags.

    Args:
        model_dir: a folder from :func:`build_tiny_model` or any Hugging Face Qwen2-VL,
            Qwen2.5-VL or Qwen3-VL checkpoint.
        dtype: parameter dtype (``"auto"``: the checkpoint's).
        device: where to put the model.
        span_masks: the model will run span-masked attention (``memory.eviction=mask``): SDPA,
            never FlashAttention (:func:`attention_backend`).

    Returns:
        ``(model, processor)``; the model is in eval mode. Tags the checkpoint lacked are added
        to ``processor.tokenizer`` and the model (:func:`add_protocol_tokens`); saving both
        (``Learner.export``) writes a checkpoint that has them.

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder with a ``config.json``.
        ConfigError: a tag cannot be made a single token (:func:`check_protocol_tokens`).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = check_model_dir(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=attention_backend(span_masks)
    )
    processor = AutoProcessor.from_pretrained(model_dir)
    add_protocol_tokens(model, processor.tokenizer, f"checkpoint {str(model_dir)!r}")
    return model.to(device).eval(), processor


def add_protocol_tokens_to_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write ``src`` to ``dst`` with the protocol tags in its tokenizer and vocabulary
    (:func:`load_policy`, then ``save_pretrained`` of model and processor), in its own dtype:
    a folder vLLM can load.

    Returns:
        ``dst`` as a Path.
    """
    model, processor = load_policy(src, dtype="auto")
    dst = Path(dst)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst


def random_policy(
    model_dir: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    span_masks: bool = False,
):
    """A checkpoint folder's architecture with random weights, built directly on ``device``
    (reference-size benchmarks from :func:`build_reference_config` without weight files);
    ``span_masks`` as in :func:`load_policy`.

    Returns:
        ``(model, processor)``; the model is in eval mode, with the protocol tags
        (:func:`add_protocol_tokens`).

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder with a ``config.json``.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    model_dir = check_model_dir(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    config._attn_implementation = attention_backend(span_masks)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    processor = AutoProcessor.from_pretrained(model_dir)
    add_protocol_tokens(model, processor.tokenizer, f"checkpoint {str(model_dir)!r}")
    return model.eval(), processor
