"""verl's PPO trainer config from our recipes (``rl/verl_config.py``), composed on CPU.

The golden file pins the overrides for the ThinkStream recipe; after an intended change,
regenerate it with ``STREAMREASON_UPDATE_GOLDEN=1 pytest tests/rl/test_verl_config.py`` and
review the diff.
"""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import DictConfig

import streamreason.recipes
from streamreason.config import load_config
from streamreason.errors import ConfigError
from streamreason.rl.verl_config import _compose, compose_verl_config, context_lengths, verl_overrides
from streamreason.rl.verl_trainer import TRAINER_MODE

RECIPES = Path(streamreason.recipes.__file__).parent
GOLDEN = Path(__file__).parent / "golden" / "verl_thinkstream_rlvr.yaml"
PATHS = dict(
    train_files="/run/train.parquet",
    val_files="/run/val.parquet",
    agent_loop_config="/run/agent_loop.yaml",
    run_dir="/run",
)
REQUIRED = ["model=/models/qwen2.5-vl-3b-sft", "data.train=/data/train.jsonl", "data.eval=/data/eval.jsonl"]


def thinkstream(*overrides):
    """The ThinkStream recipe as the verl backend runs it: ``eviction=rewrite`` (verl refuses ``mask``)."""
    return load_config(
        RECIPES / "thinkstream_rlvr.yaml", [*REQUIRED, "rollout.memory.eviction=rewrite", *overrides]
    )


def test_verl_refuses_mask_eviction_and_names_rewrite():
    cfg = load_config(RECIPES / "thinkstream_rlvr.yaml", REQUIRED)
    assert cfg.rollout.memory.eviction == "mask"  # the recipe's own memory
    with pytest.raises(ConfigError, match="eviction=mask.*rollout.memory.eviction=rewrite"):
        verl_overrides(cfg, **PATHS)


def tiny(*overrides):
    return load_config(RECIPES / "tiny_synthetic.yaml", list(overrides))


def has_key(cfg: DictConfig, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():  # noqa: SIM118 (keeps ??? keys)
            return False
        node = node._get_node(part)
    return True


def test_overrides_match_golden():
    overrides = verl_overrides(thinkstream(), **PATHS)
    if os.environ.get("STREAMREASON_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump(overrides, default_flow_style=False, width=1000, sort_keys=False))
    assert overrides == yaml.safe_load(GOLDEN.read_text())


def test_context_lengths_follow_the_formula():
    # ThinkStream: v = 1 * 192 + 2, t = 64 + 30, n = 120, W = 20, B = 1
    assert context_lengths(thinkstream()) == (15616, 512)  # 256 + 120*94 + 21*194 = 15610; 288
    # tiny: v = 16 + 2, t = 64 + 16, n = 10, W = 6, B = 2
    assert context_lengths(tiny()) == (1280, 256)  # 256 + 10*80 + 8*18 = 1200; 2*98 = 196
    # keep_all_video: W = n = 100 → 256 + 100*80 + 100*18 = 10056, rounded up to 256s
    assert (
        context_lengths(tiny("rollout.memory.keep_all_video=true", "rollout.env.max_chunks=100"))[0] == 10240
    )


def test_thinkstream_composes_and_passes_verl_validation():
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = thinkstream()
    conf = compose_verl_config(cfg, **PATHS)
    actor, rollout = conf.actor_rollout_ref.actor, conf.actor_rollout_ref.rollout
    assert conf.algorithm.adv_estimator == "grpo"
    assert rollout.n == 8 and rollout.name == "vllm"
    assert actor.use_kl_loss is True and actor.kl_loss_coef == 1e-3
    assert actor.optim.lr == 2e-7 and actor.optim.lr_scheduler_type == "cosine"
    assert conf.trainer.use_v1 is True
    assert rollout.prompt_length == context_lengths(cfg)[0] == conf.data.max_prompt_length
    assert rollout.max_model_len == sum(context_lengths(cfg))
    assert conf.reward.reward_model.enable is False and conf.reward.num_workers == 0
    assert conf.trainer.default_local_dir == "/run/checkpoints" and conf.trainer.experiment_name == "run"
    validate_config(conf, use_reference_policy=need_reference_policy(conf), use_critic=need_critic(conf))
    assert need_reference_policy(conf) and not need_critic(conf)


def test_passthrough_merges_on_top_and_unknown_keys_fail():
    key = "verl.actor_rollout_ref.rollout.gpu_memory_utilization"
    conf = compose_verl_config(thinkstream(f"{key}=0.3"), **PATHS)
    assert conf.actor_rollout_ref.rollout.gpu_memory_utilization == 0.3
    # a free-form dict of the yaml ({}) takes new keys
    conf = compose_verl_config(
        thinkstream("verl.actor_rollout_ref.rollout.engine_kwargs.vllm.limit_mm_per_prompt.video=21"), **PATHS
    )
    assert conf.actor_rollout_ref.rollout.engine_kwargs.vllm.limit_mm_per_prompt.video == 21

    with pytest.raises(ConfigError) as e:
        compose_verl_config(thinkstream("verl.actor_rollout_ref.rollout.gpu_memory_utilisation=0.3"), **PATHS)
    assert "verl.actor_rollout_ref.rollout.gpu_memory_utilisation" in str(e.value)
    assert "gpu_memory_utilization" in str(e.value)


def test_every_override_key_exists_in_verl_defaults():
    defaults = _compose([])
    for cfg in (thinkstream("optim.lora.rank=8"), tiny()):
        overrides = verl_overrides(cfg, **PATHS)
        keys = [item.split("=", 1)[0] for item in overrides]
        assert not [k for k in keys if k[0] in "+~"]
        assert [k for k in keys if not has_key(defaults, k)] == []


def test_tiny_recipe_composes():
    cfg = tiny(
        "trainer.checkpoint_every=0", "trainer.wandb_project=demo", "model=/models/a,b=c",
        "optim.grad_clip=0", "optim.dtype=bfloat16",
    )  # fmt: skip
    conf = compose_verl_config(cfg, **PATHS)
    actor = conf.actor_rollout_ref.actor
    assert actor.use_kl_loss is False
    assert actor.optim.lr_scheduler_type == "constant"
    assert actor.optim.clip_grad == float("inf")  # 0 = no clipping
    assert actor.fsdp_config.model_dtype == "bf16"
    assert actor.ppo_mini_batch_size == 8 and actor.ppo_micro_batch_size_per_gpu == 16
    assert conf.actor_rollout_ref.rollout.top_k == -1  # ours 0 = off, vLLM's -1
    assert conf.actor_rollout_ref.model.path == "/models/a,b=c"  # quoted through Hydra
    assert conf.trainer.save_freq == 40  # 0 = at the end only
    assert (
        list(conf.trainer.logger) == ["console", "file", "tensorboard", "wandb"]
        and conf.trainer.project_name == "demo"
    )


def test_skip_mm_profiling_reaches_verls_vllm_engine_kwargs():
    assert (
        "skip_mm_profiling"
        not in compose_verl_config(tiny(), **PATHS).actor_rollout_ref.rollout.engine_kwargs.vllm
    )
    conf = compose_verl_config(tiny("engine.skip_mm_profiling=true"), **PATHS)
    assert conf.actor_rollout_ref.rollout.engine_kwargs.vllm.skip_mm_profiling is True


# -- what verl's V1 trainer does with the composed config (rl/verl_trainer.py) ------------------


def _v1_advantages(conf, groups, rows_per_traj, *, ours=True):
    """Advantages by verl's V1 function (``compute_advantage_for_multi_trajectories``) called as
    ``PPOTrainer._compute_advantage`` calls it, on a batch laid out as verl's agent loop leaves it:
    keys ``{uid}_{session}_{output}``, the reward on the last token of a trajectory's last output.

    Returns ``[rows, 4]`` advantages and, per row, its (group, trajectory)."""
    from verl import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    from streamreason.rl.verl_trainer import grpo_advantage

    keys, uids, scores, owner = [], [], [], []
    for uid, rewards in groups.items():
        for s, (r, k) in enumerate(zip(rewards, rows_per_traj)):
            for i in range(k):
                keys.append(f"{uid}_{s}_{i}")
                uids.append(uid)
                scores.append([0.0, 0.0, 0.0, r if i == k - 1 else 0.0])
                owner.append((uid, s))
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": torch.tensor(scores, dtype=torch.float32),
            "response_mask": torch.ones(len(keys), 4),
        },
        non_tensors={"uid": np.array(uids, dtype=object)},
    )
    algo = conf.algorithm

    def run():
        return compute_advantage_for_multi_trajectories(
            data, batch_keys=keys, adv_estimator=algo.adv_estimator, gamma=algo.gamma, lam=algo.lam,
            num_repeat=conf.actor_rollout_ref.rollout.n, norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo,
            config=algo,
        )  # fmt: skip

    if ours:
        with grpo_advantage(conf.trainer.v1[TRAINER_MODE].adv_epsilon):
            return run().batch["advantages"], owner
    return run().batch["advantages"], owner


def test_equal_reward_groups_get_exactly_zero_advantage_under_verls_v1_trainer():
    conf = compose_verl_config(thinkstream(), **PATHS)
    assert conf.algorithm.adv_estimator == "grpo" and conf.trainer.v1.trainer_mode == TRAINER_MODE
    rows = [3, 1, 5, 2, 2, 4, 1, 3]  # outputs per trajectory (eviction blocks)
    groups = {"a": [0.2] * 8, "b": [0.7] * 8}
    adv, _ = _v1_advantages(conf, groups, rows)
    assert torch.equal(adv, torch.zeros_like(adv))
    # verl's own GRPO on the same batch: the one-ulp error over std + eps, one sign per group
    raw, owner = _v1_advantages(conf, groups, rows, ours=False)
    a = raw[[o[0] == "a" for o in owner]]
    b = raw[[o[0] == "b" for o in owner]]
    assert (a < -1e-3).all() and (b > 1e-3).all()


def test_mixed_groups_get_verls_grpo_numbers_on_every_output_of_the_trajectory():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    conf = compose_verl_config(thinkstream(), **PATHS)
    rows = [2, 1, 4, 3, 1, 2, 5, 1]
    groups = {"m": [1.0, 0.2, 0.6, 0.2, 0.9, 0.0, 0.35, 0.2], "e": [0.7] * 8}
    adv, owner = _v1_advantages(conf, groups, rows)
    eps = conf.trainer.v1[TRAINER_MODE].adv_epsilon
    assert eps == 1e-5  # the recipe's rl.adv_epsilon, not verl's default 1e-6
    expected, _ = compute_grpo_outcome_advantage(
        token_level_rewards=torch.tensor(groups["m"])[:, None], response_mask=torch.ones(8, 1),
        index=np.array(["m"] * 8, dtype=object), epsilon=eps,
    )  # fmt: skip
    for row, (uid, s) in enumerate(owner):
        want = expected[s, 0].item() if uid == "m" else 0.0
        assert adv[row].tolist() == [want] * 4


def _fake_balance(self, batch, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
    """verl's ``PPOTrainer._balance_batch`` as far as batch sizes go: pad with no-op rows
    (``upsample_batch_to_divisible_size``: up to the next multiple) of
    ``_get_required_batch_multiple(dp_size)``; the reordering across ranks is left out."""
    from transfer_queue import KVBatchMeta

    dp = self.config.trainer.n_gpus_per_node * self.config.trainer.nnodes
    multiple = self._get_required_batch_multiple(dp)
    pad = -len(batch) % multiple
    return KVBatchMeta(
        keys=[*batch.keys, *(f"pad_{i}_0" for i in range(pad))], tags=[*batch.tags, *([{"is_padding": True}] * pad)],
        partition_id=batch.partition_id,
    )  # fmt: skip


def _optimizer_steps(conf, trainer_cls, rows_per_traj, monkeypatch):
    """Optimizer steps verl takes on one rollout: the trainer's ``_balance_batch`` and
    ``_update_actor`` on the driver, then verl's ``TrainingWorker.train_mini_batch`` on each
    data-parallel rank's share, counting its ``train_batch`` calls (one optimizer step each)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import TrainingWorker

    monkeypatch.setattr(PPOTrainer, "_balance_batch", _fake_balance)
    trainer = trainer_cls(conf.copy())  # verl's constructor (nothing starts); it changes its config
    trainer.global_steps = 1
    sent = []
    trainer.actor_rollout_wg = SimpleNamespace(
        update_actor=lambda batch: sent.append(batch) or {"metrics": {"mfu": [0.0]}}
    )
    keys = [f"u{t // 8}_{t % 8}_{i}" for t, k in enumerate(rows_per_traj) for i in range(k)]
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")
    batch = trainer._balance_batch(batch, metrics={})
    trainer._update_actor(batch, metrics={})
    (meta,) = sent
    dp = conf.trainer.n_gpus_per_node * conf.trainer.nnodes
    assert len(meta) % dp == 0
    steps_per_rank = []
    for rank in range(dp):
        share = len(meta) // dp
        td = TensorDict({"row": torch.arange(share)}, batch_size=[share])
        tu.assign_non_tensor(td, **meta.extra_info)
        calls = []
        worker = SimpleNamespace(
            engine=SimpleNamespace(
                train_mode=lambda **_: nullcontext(), get_data_parallel_size=lambda: dp,
                get_data_parallel_rank=lambda r=rank: r, is_mp_src_rank_with_outputs=lambda: False,
            ),
            train_batch=lambda mb, calls=calls: calls.append((len(mb), tu.get(mb, "update_lr_scheduler"))),
            profiler=SimpleNamespace(step=lambda: None),
        )  # fmt: skip
        TrainingWorker.train_mini_batch(worker, td)
        assert [lr for _, lr in calls].count(True) == 1 and calls[-1][1]  # one scheduler step per rollout
        assert sum(n for n, _ in calls) == share * conf.actor_rollout_ref.actor.ppo_epochs
        steps_per_rank.append(len(calls))
    assert len(set(steps_per_rank)) == 1  # the ranks step together
    return steps_per_rank[0], len(meta)


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ((), 1),  # the recipe: one on-policy update per rollout
        (("cluster.gpus_per_node=8",), 1),
        (("cluster.gpus_per_node=8", "rl.ppo_epochs=2", "rl.mini_batches=3"), 6),
        (("rl.mini_batches=4", "trainer.rows_per_step=2"), 4),
    ],
)
def test_optimizer_steps_per_rollout_are_epochs_times_mini_batches_whatever_the_rows(
    overrides, steps, monkeypatch
):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from streamreason.rl.verl_trainer import StreamPPOTrainer

    cfg = thinkstream(*overrides)
    conf = compose_verl_config(cfg, **PATHS)
    assert cfg.rl.ppo_epochs * cfg.rl.mini_batches == steps
    # a ThinkStream-shaped rollout: 120 chunks, W = 20, B = 1 gives 101 rows, fewer when the video is shorter
    rng = np.random.default_rng(0)
    rows = rng.integers(90, 102, size=cfg.trainer.rows_per_step * cfg.rollout.group_size).tolist()
    ours, padded = _optimizer_steps(conf, StreamPPOTrainer, rows, monkeypatch)
    assert ours == steps
    dp, n = cfg.cluster.gpus_per_node, cfg.rollout.group_size
    assert padded - sum(rows) < cfg.rl.mini_batches * math.lcm(dp, n)  # verl's no-op rows
    # verl's own sync trainer on the same config and rollout: a step per ppo_mini_batch_size·n rows,
    # ~101 per epoch for the recipe
    theirs, _ = _optimizer_steps(conf, PPOTrainerSync, rows, monkeypatch)
    mini_batch = conf.actor_rollout_ref.actor.ppo_mini_batch_size * n
    assert theirs == cfg.rl.ppo_epochs * math.ceil(sum(rows) / mini_batch) > 40 * steps


def test_mini_batch_rows():
    from streamreason.rl.verl_trainer import mini_batch_rows

    assert mini_batch_rows(0, 3, 8) == 8
    for rows in range(1, 300, 7):
        for m in (1, 2, 3, 4):
            for unit in (1, 8, 24):
                size = mini_batch_rows(rows, m, unit)
                assert size % unit == 0 and m * size >= rows and m * size - rows < m * unit


def test_ray_processes_find_the_trainer_by_the_configs_mode(tmp_path):
    """What verl's TaskRunner (a Ray actor) does with the config: ``import verl`` under the
    runtime environment's variables, then ``get_trainer_cls(trainer.v1.trainer_mode)(config)``;
    the trainer runs verl's sync code paths (its replay buffer, one parameter sync per step)."""
    import subprocess
    import sys

    from omegaconf import OmegaConf

    conf = compose_verl_config(thinkstream(), **PATHS)
    OmegaConf.save(conf, tmp_path / "verl.yaml")
    code = (
        "import sys, verl\n"
        "from omegaconf import OmegaConf\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer\n"
        "conf = OmegaConf.load(sys.argv[1])\n"
        "trainer = get_trainer_cls(conf.trainer.v1.trainer_mode)(conf)\n"
        "print(type(trainer).__name__, type(trainer.replay_buffer) is ReplayBuffer, trainer.parameter_sync_step)\n"
    )
    env = {**os.environ, **conf.ray_kwargs.ray_init.runtime_env.env_vars}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "verl.yaml")], capture_output=True, text=True, env=env,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["StreamPPOTrainer", "True", "1"]


def test_resume_sets_verls_resume_mode_and_guards_the_run_directory(tmp_path):
    """``--resume`` is verl's ``trainer.resume_mode=auto`` (``disable`` for a new run); a folder
    holding a run needs ``--resume``, and a resumed verl run keeps its recipe (``--dry-run``:
    the same checks, nothing launched)."""
    from omegaconf import OmegaConf

    from streamreason.envs.synthetic import synthesize
    from streamreason.rl.run_dir import RunDir
    from streamreason.rl.verl_backend import train_verl

    data = synthesize(tmp_path / "data", n=1, seed=0, min_seconds=4, max_seconds=4)
    run = tmp_path / "run"
    args = ["model=/models/tiny", f"data.train={data}", f"data.eval={data}", f"trainer.run_dir={run}"]

    def resume_mode():
        return OmegaConf.load(run / "verl_config.yaml").trainer.resume_mode

    train_verl(tiny(*args), dry_run=True)
    assert resume_mode() == "disable" and not RunDir(run).holds_run()  # a dry run starts no run
    train_verl(tiny(*args), dry_run=True)
    RunDir(run).start(tiny(*args), backend="verl", steps=1)
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        train_verl(tiny(*args), dry_run=True)
    train_verl(tiny(*args), dry_run=True, resume=True)
    assert resume_mode() == "auto"
    with pytest.raises(ConfigError, match=r"differs from .*config\.yaml in optim\.lr, trainer\.seed;"):
        train_verl(tiny(*args, "optim.lr=0.5", "trainer.seed=3"), dry_run=True, resume=True)
    with pytest.raises(ConfigError, match="verl.trainer.resume_mode: set by `streamreason train --resume`"):
        train_verl(tiny(*args[:3], f"trainer.run_dir={tmp_path / 'new'}", "verl.trainer.resume_mode=auto"),
                   dry_run=True)  # fmt: skip
