"""The tiny default model: deterministic, small, a real Qwen2.5-VL checkpoint folder."""

import hashlib

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from streamreason.modeling import (
    PROTOCOL_TOKENS,
    QWEN_SPECIAL_TOKENS,
    build_tiny_model,
    check_protocol_tokens,
)


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_build_is_deterministic(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    assert _digest(again) == _digest(tiny_model_dir)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _digest(other)["model.safetensors"] != _digest(tiny_model_dir)["model.safetensors"]


def test_loads_with_auto_classes_and_runs_video(tiny_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2_5_vl"
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    tok = processor.tokenizer
    for t in QWEN_SPECIAL_TOKENS + PROTOCOL_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    check_protocol_tokens(tok)  # one id next to text and to every other tag, too
    assert tok.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "<|video_pad|>" in text
    frames = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    inputs = processor(text=[text], videos=[frames], return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert (
        model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    )  # gradient reaches the vision tower


def test_span_masked_models_never_get_flash_attention(monkeypatch):
    """FlashAttention takes no arbitrary mask: with flash-attn and CUDA present, a model that
    will run ``memory.eviction=mask`` still loads with SDPA."""
    import importlib.util

    import torch

    from streamreason.modeling import attention_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else None
    )
    assert attention_backend() == "flash_attention_2"
    assert attention_backend(span_masks=True) == "sdpa"
