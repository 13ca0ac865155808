"""verl's V1 GRPO trainer on our agent loop (``pytest -m gpu``): FSDP actor, vLLM rollout, Ray;
three steps of the tiny recipe with finite losses and weights that change."""

import json
import os
from pathlib import Path

import pytest
import torch

import streamreason.recipes
from streamreason.cli import main

pytestmark = pytest.mark.gpu
pytest.importorskip("vllm")
RECIPE = str(Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml")


def test_verl_grpo_three_steps(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from streamreason.envs.synthetic import synthesize

    train = synthesize(tmp_path / "train", n=8, seed=0, min_seconds=4, max_seconds=6)
    evals = synthesize(tmp_path / "eval", n=2, seed=1, min_seconds=4, max_seconds=6)
    run = tmp_path / "run"
    n_gpus = torch.cuda.device_count()
    main(["train", RECIPE, "trainer.backend=verl", f"model={tiny_model_dir}", f"data.train={train}",
          f"data.eval={evals}", f"trainer.run_dir={run}", "trainer.steps=3", "trainer.rows_per_step=4",
          "trainer.eval_every=0", "trainer.checkpoint_every=3", f"cluster.gpus_per_node={n_gpus}",
          "engine.enforce_eager=true", "engine.gpu_memory_utilization=0.3", "engine.dtype=bfloat16",
          "optim.dtype=bfloat16",
          "verl.actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"])  # fmt: skip
    steps = [json.loads(line) for line in (run / "verl_metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if "actor/pg_loss" in s["data"]]
    assert [s["step"] for s in train_steps] == [1, 2, 3]
    for s in train_steps:
        print({k: round(v, 4) for k, v in s["data"].items() if isinstance(v, float) and k.split("/")[0] in
               ("actor", "critic", "response_length", "timing_s", "perf")})  # fmt: skip
        assert all(
            torch.isfinite(torch.tensor(float(s["data"][k]))) for k in ("actor/pg_loss", "actor/grad_norm")
        )
    hf = next((run / "checkpoints").glob("global_step_3/actor/huggingface"))
    after = load_file(next(hf.glob("*.safetensors")))
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    changed = [k for k in before if k in after and not torch.equal(before[k].float(), after[k].float())]
    assert changed, "no weight changed after 3 GRPO steps"
    assert os.path.isfile(run / "verl_config.yaml")
