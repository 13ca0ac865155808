"""``trainer.backend=verl``: a recipe launched as verl's V1 GRPO trainer (FSDP actor, vLLM rollout, Ray).

``streamreason train RECIPE trainer.backend=verl`` prepares the run directory and hands over
to verl's ``run_ppo`` with ``TaskRunnerV1`` (``verl/trainer/main_ppo.py``):

* ``config.yaml``: the resolved recipe, read back by every agent-loop worker;
* ``train.parquet`` / ``val.parquet``: the JSONL rows in verl's dataset layout, one row per
  stream with the whole :class:`~streamreason.types.StreamRow` as JSON in ``extra_info.row``
  (videos stay where they are; paths made absolute);
* ``agent_loop.yaml``: registers :class:`~streamreason.rl.verl_agent.StreamAgentLoop` as
  ``streamreason``, the rollout's default agent loop;
* ``verl_config.yaml``: verl's full config (``rl/verl_config.py``), for the record; its trainer
  is :class:`~streamreason.rl.verl_trainer.StreamPPOTrainer` (``trainer.v1.trainer_mode``);

and, while verl runs, ``verl_metrics.jsonl`` (verl's file logger, one line per step),
``tensorboard/`` and ``checkpoints/``.

verl needs CUDA (FSDP workers and vLLM servers); ``--dry-run`` writes all of the above on any
machine and stops before launching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from streamreason.errors import ConfigError


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


def prepare_run(cfg, run_dir: Path):
    """Write the run directory's files (see the module docstring); returns verl's config."""
    from omegaconf import OmegaConf

    from streamreason.rl.verl_agent import AGENT_NAME
    from streamreason.rl.verl_config import compose_verl_config
    from streamreason.schema import to_yaml

    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = run_dir / "config.yaml"
    recipe.write_text(to_yaml(cfg))
    write_dataset(cfg.data.train, run_dir / "train.parquet")
    write_dataset(cfg.data.eval, run_dir / "val.parquet")
    agent_cfg = run_dir / "agent_loop.yaml"
    OmegaConf.save(
        [
            {
                "name": AGENT_NAME,
                "_target_": "streamreason.rl.verl_agent.StreamAgentLoop",
                "recipe": str(recipe),
            }
        ],
        agent_cfg,
    )
    config = compose_verl_config(
        cfg, train_files=str(run_dir / "train.parquet"), val_files=str(run_dir / "val.parquet"),
        agent_loop_config=str(agent_cfg), run_dir=str(run_dir),
    )  # fmt: skip
    OmegaConf.save(config, run_dir / "verl_config.yaml")
    return config


def train_verl(cfg, dry_run: bool = False) -> Path:
    """Prepare the run directory and (unless ``dry_run``) run verl's V1 trainer to the end.

    Returns:
        the run directory.

    Raises:
        ConfigError: no CUDA device (verl's workers need GPUs), or a config verl rejects.
    """
    import torch

    run_dir = Path(cfg.trainer.run_dir)
    config = prepare_run(cfg, run_dir)
    if dry_run:
        return run_dir
    if not torch.cuda.is_available():
        raise ConfigError(
            "trainer.backend=verl needs CUDA GPUs (verl's FSDP workers and vLLM servers); "
            "pass --dry-run to only write the run directory, or use trainer.backend=local"
        )
    import os

    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    # verl's file and TensorBoard loggers take their paths from the environment (Ray workers inherit it).
    os.environ.setdefault("VERL_FILE_LOGGER_PATH", str(run_dir.resolve() / "verl_metrics.jsonl"))
    os.environ.setdefault("TENSORBOARD_DIR", str(run_dir.resolve() / "tensorboard"))
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    run_ppo(config, task_runner_class=TaskRunnerV1)
    return run_dir
