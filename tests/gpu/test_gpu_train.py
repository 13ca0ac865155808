"""The local trainer on one GPU (``pytest -m gpu``): SFT, then GRPO steps in bf16 on CUDA."""

from pathlib import Path

import pytest
import torch

import streamreason.recipes
from streamreason.cli import main
from streamreason.rl.metrics import read_metrics

pytestmark = pytest.mark.gpu
RECIPE = str(Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml")


def test_sft_then_grpo_on_cuda(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from streamreason.envs.synthetic import synthesize

    train = synthesize(tmp_path / "train", n=8, seed=0, min_seconds=4, max_seconds=6)
    evals = synthesize(tmp_path / "eval", n=2, seed=1, min_seconds=4, max_seconds=6)
    common = [f"data.train={train}", f"data.eval={evals}", "engine.device=cuda", "optim.dtype=bfloat16",
              "trainer.eval_samples=1", "trainer.tensorboard=false"]  # fmt: skip
    main(
        [
            "sft",
            RECIPE,
            *common,
            f"model={tiny_model_dir}",
            f"trainer.run_dir={tmp_path / 'sft'}",
            "sft.epochs=10",
        ]
    )
    sft = tmp_path / "sft" / "final"
    main(["train", RECIPE, *common, f"model={sft}", f"trainer.run_dir={tmp_path / 'grpo'}", "trainer.steps=3",
          "trainer.rows_per_step=4", "trainer.eval_every=0", "trainer.checkpoint_every=3"])  # fmt: skip
    steps = [r for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if "grad_norm" in r]
    assert steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    before, after = (
        load_file(sft / "model.safetensors"),
        load_file(tmp_path / "grpo" / "final" / "model.safetensors"),
    )
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)
    assert (tmp_path / "grpo" / "checkpoints" / "step_00000003" / "manifest.json").is_file()
