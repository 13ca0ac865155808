"""``trainer.backend=verl``: a recipe launched as verl's V1 GRPO trainer (FSDP actor, vLLM rollout, Ray).

``streamreason train RECIPE trainer.backend=verl`` prepares the run directory
(:mod:`streamreason.rl.run_dir`) and hands over to verl's ``run_ppo`` with ``TaskRunnerV1``
(``verl/trainer/main_ppo.py``):

* ``config.yaml``: the resolved recipe, read back by every agent-loop worker;
* ``train.parquet`` / ``val.parquet``: the JSONL rows in verl's dataset layout, one row per
  stream with the whole :class:`~streamreason.types.StreamRow` as JSON in ``extra_info.row``
  (videos stay where they are; paths made absolute);
* ``agent_loop.yaml``: registers :class:`~streamreason.rl.verl_agent.StreamAgentLoop` as
  ``streamreason``, the rollout's default agent loop;
* ``verl_config.yaml``: verl's full config (``rl/verl_config.py``), for the record; its trainer
  is :class:`~streamreason.rl.verl_trainer.StreamPPOTrainer` (``trainer.v1.trainer_mode``);
* ``status.json``: ``running`` while verl runs, then ``finished`` with ``final`` naming the last
  checkpoint's model, or ``failed`` with the error;

and, while verl runs, ``verl_metrics.jsonl`` (verl's file logger, one line per step),
``tensorboard/`` and ``checkpoints/`` (``global_step_N/actor/``).

``--resume`` continues from verl's newest checkpoint (verl's ``trainer.resume_mode=auto``; a
new run uses ``disable``), with the run's own ``config.yaml``: the agent loop reads it, so the
recipe must be the one the run started with.

verl needs CUDA (FSDP workers and vLLM servers); ``--dry-run`` writes the files above (not the
status) on any machine and stops before launching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from streamreason.errors import ConfigError, StreamReasonError


@dataclass
class ClusterConfig:
    """Resources of the verl backend (``trainer.backend=verl``).

    Attributes:
        nodes: machines in the Ray cluster.
        gpus_per_node: GPUs used on each.
        fsdp_offload: offload FSDP parameters and optimizer state to CPU (actor and reference).
        agent_workers: verl agent-loop workers (Ray actors running the streaming loop).
    """

    nodes: int = 1
    gpus_per_node: int = 1
    fsdp_offload: bool = False
    agent_workers: int = 2


def write_dataset(rows_path: str, out: Path) -> int:
    """Write the rows of a JSONL in verl's RL dataset layout (parquet); returns the row count.

    Columns: ``data_source`` (``streamreason``), ``prompt`` (chat messages verl's dataset
    requires; the agent loop builds its own context), ``agent_name``, ``reward_model``, and
    ``extra_info`` = ``{"index": i, "row": <StreamRow JSON>}``.

    Raises:
        ConfigError: the file is missing or has no valid row.
    """
    import pandas as pd

    from streamreason.rl.verl_agent import AGENT_NAME
    from streamreason.stack import load_rows

    rows, _ = load_rows(rows_path)
    records = []
    for i, row in enumerate(rows):
        d = row.to_dict()
        d["video_path"] = str(Path(row.video_path).resolve())
        records.append({
            "data_source": "streamreason", "agent_name": AGENT_NAME,
            "prompt": [{"role": "user", "content": f"stream {row.id}"}],
            "reward_model": {"style": "rule", "ground_truth": ""},
            "extra_info": {"index": i, "row": json.dumps(d)},
        })  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_parquet(out)
    return len(records)


def prepare_run(cfg, run_dir: Path, *, resume: bool = False, write_config: bool = True):
    """Write the run directory's files (see the module docstring); returns verl's config.

    Args:
        cfg: the resolved recipe.
        run_dir: the run directory.
        resume: continue from verl's newest checkpoint there (``trainer.resume_mode=auto``;
            else ``disable``).
        write_config: write ``config.yaml`` (:meth:`RunDir.write_config`); :func:`train_verl`
            passes False, :meth:`RunDir.start` having written it.

    Raises:
        ConfigError: the recipe sets ``verl.trainer.resume_mode`` (``--resume`` decides it).
    """
    from omegaconf import OmegaConf, open_dict

    from streamreason.rl.run_dir import RunDir
    from streamreason.rl.verl_agent import AGENT_NAME
    from streamreason.rl.verl_config import compose_verl_config

    if not cfg.data.eval:
        raise ConfigError(
            "trainer.backend=verl needs data.eval (verl's val_files): pass data.eval=FILE.jsonl"
        )
    if "resume_mode" in ((cfg.verl or {}).get("trainer") or {}):
        raise ConfigError("verl.trainer.resume_mode: set by `streamreason train --resume` (auto) or its absence "
                          "(disable); drop the key")  # fmt: skip
    run = RunDir(run_dir.resolve())
    run.path.mkdir(parents=True, exist_ok=True)
    if write_config:
        run.write_config(cfg)
    write_dataset(cfg.data.train, run.path / "train.parquet")
    write_dataset(cfg.data.eval, run.path / "val.parquet")
    agent_cfg = run.path / "agent_loop.yaml"
    OmegaConf.save(
        [
            {
                "name": AGENT_NAME,
                "_target_": "streamreason.rl.verl_agent.StreamAgentLoop",
                "recipe": str(run.config),
            }
        ],
        agent_cfg,
    )
    config = compose_verl_config(
        cfg, train_files=str(run.path / "train.parquet"), val_files=str(run.path / "val.parquet"),
        agent_loop_config=str(agent_cfg), run_dir=str(run.path),
    )  # fmt: skip
    with open_dict(config):
        config.trainer.resume_mode = "auto" if resume else "disable"
    OmegaConf.save(config, run.path / "verl_config.yaml")
    return config


def train_verl(cfg, dry_run: bool = False, resume: bool = False) -> Path:
    """Prepare the run directory and (unless ``dry_run``) run verl's V1 trainer to the end.

    The run directory's status follows the run (:class:`~streamreason.rl.run_dir.RunDir`):
    ``running``, then ``finished`` with the last checkpoint's model as ``final``, ``failed`` with
    the error (re-raised), or ``stopped`` on Ctrl-C.

    Args:
        cfg: the resolved recipe (``trainer.backend=verl``).
        dry_run: write the run directory's files and launch nothing (any machine).
        resume: continue the run in ``trainer.run_dir`` from verl's newest checkpoint (from the
            start when it has none).

    Returns:
        the run directory.

    Raises:
        ConfigError: the run directory already holds a run and ``resume`` is not set; ``resume``
            with a recipe other than the run's ``config.yaml``; no CUDA device (verl's workers
            need GPUs); or a config verl rejects.
        StreamReasonError: verl returned without the last step's checkpoint.
    """
    import torch

    from streamreason.rl.run_dir import RunDir

    run = RunDir(Path(cfg.trainer.run_dir).resolve())
    if resume:
        _check_same_recipe(run, cfg)
    elif run.holds_run():
        raise ConfigError(f"{run.path} already holds a run: pass --resume, or set another trainer.run_dir")
    if dry_run:
        prepare_run(cfg, run.path, resume=resume, write_config=not (resume and run.config.exists()))
        return run.path
    if not torch.cuda.is_available():
        raise ConfigError(
            "trainer.backend=verl needs CUDA GPUs (verl's FSDP workers and vLLM servers); "
            "pass --dry-run to only write the run directory, or use trainer.backend=local"
        )
    run.start(cfg, backend="verl", steps=cfg.trainer.steps, resume=resume)
    try:
        _launch(cfg, run, resume)
    except KeyboardInterrupt:
        run.stop()
        raise
    except BaseException as e:
        run.fail(str(e) or type(e).__name__)
        raise
    return run.path


def _launch(cfg, run, resume: bool) -> None:
    """Prepare the files, run verl to the end and record the final model."""
    import os

    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    config = prepare_run(cfg, run.path, resume=resume, write_config=False)
    if resume:
        ckpt = run.latest_checkpoint()
        run.keep_verl_metrics(int(ckpt.name.removeprefix("global_step_")) if ckpt else 0)
    # verl's file and TensorBoard loggers take their paths from the environment (Ray workers
    # inherit it); the metrics file is part of the run directory's contract, so it is set here.
    os.environ["VERL_FILE_LOGGER_PATH"] = str(run.verl_metrics)
    os.environ.setdefault("TENSORBOARD_DIR", str(run.path / "tensorboard"))
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    run_ppo(config, task_runner_class=TaskRunnerV1)
    ckpt, steps = run.latest_checkpoint(), config.trainer.total_training_steps
    if ckpt is None or ckpt.name != f"global_step_{steps}":
        raise StreamReasonError(
            f"verl returned, but its newest checkpoint in {run.checkpoints} is "
            f"{ckpt.name if ckpt else 'none'}, not global_step_{steps} (its last step)"
        )
    hf = ckpt / "actor" / "huggingface"
    has_weights = any(hf.glob("*.safetensors")) or any(hf.glob("*.bin"))
    run.update(steps)
    run.finish(final=hf if has_weights else ckpt / "actor")


def _check_same_recipe(run, cfg) -> None:
    """A verl run resumes with the recipe it started with: its agent-loop workers read
    ``config.yaml``, and verl's config is composed from ``cfg``; the two must agree.

    Raises:
        ConfigError: naming the keys where ``cfg`` and the run's ``config.yaml`` differ.
    """
    import yaml

    from streamreason.schema import to_yaml

    if not run.config.exists():
        return
    old, new = yaml.safe_load(run.config.read_text()), yaml.safe_load(to_yaml(cfg))
    if old == new:
        return
    flat_old, flat_new = _flatten(old), _flatten(new)
    changed = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
    raise ConfigError(
        f"--resume: this recipe differs from {run.config} in {', '.join(changed[:8])}"
        f"{' ...' if len(changed) > 8 else ''}; a verl run resumes with the recipe it started with "
        "(its agent-loop workers read config.yaml): pass the same recipe and overrides, or set "
        "another trainer.run_dir"
    )


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict) or not d:
        return {prefix.rstrip("."): d}
    return {k: v for key, value in d.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
