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
    _grpo(sft, tmp_path / "grpo", common)


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_grpo_on_cuda(tiny_model_dir, tmp_path, engine):
    """GRPO steps with either engine; the vLLM one takes the learner's weights after each update."""
    from streamreason.envs.synthetic import synthesize

    if engine == "vllm":
        pytest.importorskip("vllm")
    train = synthesize(tmp_path / "train", n=8, seed=0, min_seconds=4, max_seconds=6)
    evals = synthesize(tmp_path / "eval", n=2, seed=1, min_seconds=4, max_seconds=6)
    common = [f"data.train={train}", f"data.eval={evals}", "engine.device=cuda", "optim.dtype=bfloat16",
              "trainer.eval_samples=1", "trainer.tensorboard=false", f"engine.name={engine}",
              "engine.gpu_memory_utilization=0.2", "engine.enforce_eager=true", "engine.dtype=bfloat16"]  # fmt: skip
    _grpo(Path(tiny_model_dir), tmp_path / "grpo", common)


def _grpo(model: Path, run: Path, common: list[str]) -> None:
    import time

    from safetensors.torch import load_file

    t0 = time.perf_counter()
    main(["train", RECIPE, *common, f"model={model}", f"trainer.run_dir={run}", "trainer.steps=3",
          "trainer.rows_per_step=4", "trainer.eval_every=0", "trainer.checkpoint_every=3"])  # fmt: skip
    steps = [r for r in read_metrics(run / "metrics.jsonl") if "grad_norm" in r]
    for r in steps:
        print({k: round(v, 4) for k, v in r.items() if k in ("step", "loss", "grad_norm", "reward", "rollout_s",
                                                            "update_s", "rollout_tokens_per_s", "step_time_s")})  # fmt: skip
    print(f"{common[-4]}: 3 GRPO steps + eval in {time.perf_counter() - t0:.1f} s, "
          f"peak GPU memory (torch) {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")  # fmt: skip
    assert steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    before, after = load_file(model / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)
    assert (run / "checkpoints" / "step_00000003" / "manifest.json").is_file()
