"""One entry point per job: each builds, from the recipe, only the components it uses.

Counted with the garbage collector: the policy modules (Hugging Face models that generate,
``GenerationMixin``: the whole ``...ForConditionalGeneration``, not its towers) alive after a job is built, on the ThinkStream recipe (KL 1e-3 to a reference
model) with the tiny checkpoint.
"""

import gc
from pathlib import Path

import streamreason.recipes
from streamreason.config import load_config

THINKSTREAM = str(Path(streamreason.recipes.__file__).parent / "thinkstream_rlvr.yaml")


def _policy_modules() -> int:
    from transformers import GenerationMixin

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, GenerationMixin))


def _thinkstream(model_dir, tmp_path):
    cfg = load_config(THINKSTREAM, [f"model={model_dir}", "env_pool.in_process=true",
                                    "engine.device=cpu", f"trainer.run_dir={tmp_path / 'run'}"])  # fmt: skip
    assert cfg.rl.kl_coef > 0  # the recipe trains with a reference model
    return cfg


def test_eval_builds_no_reference_model(tiny_model_dir, tmp_path):
    from streamreason.rl.evaluate import Evaluator

    cfg = _thinkstream(tiny_model_dir, tmp_path)
    before = _policy_modules()
    job = Evaluator(cfg)
    assert _policy_modules() - before == 1  # the policy the engine generates with, nothing else
    assert job.policy.engine.shares_policy and job.policy.engine.model is job.policy.model
    job.pool.shutdown()


def test_grpo_builds_the_reference_model_sft_does_not(tiny_model_dir, tmp_path):
    from streamreason.rl.sft import SFTTrainer
    from streamreason.rl.trainer import GRPOTrainer

    cfg = _thinkstream(tiny_model_dir, tmp_path)
    before = _policy_modules()
    grpo = GRPOTrainer(cfg)
    assert _policy_modules() - before == 2  # policy + frozen reference (rl.kl_coef > 0)
    assert grpo.ref_model is not None and not any(p.requires_grad for p in grpo.ref_model.parameters())
    grpo.close()
    del grpo
    before = _policy_modules()
    sft = SFTTrainer(cfg)
    assert _policy_modules() - before == 1  # the policy only
    assert sft.policy.engine is None  # SFT generates nothing: no engine (no vLLM started)
    sft.close()


def test_a_null_eval_split_is_refused_where_an_eval_is_the_job(tmp_path, capsys):
    import pytest

    from streamreason.cli import main
    from streamreason.errors import ConfigError
    from streamreason.rl.verl_backend import prepare_run

    tiny = str(Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml")
    with pytest.raises(SystemExit) as e:
        main(["eval", tiny, "data.eval=null"])
    assert e.value.code == 1 and "data.eval, which is null" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="trainer.backend=verl needs data.eval"):
        prepare_run(load_config(tiny, ["data.eval=null"]), tmp_path / "run")
