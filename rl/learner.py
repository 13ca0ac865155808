"""The learner: log-probs of packed rows, GRPO and SFT updates, optimizer, FSDP2.

One class serves both trainers of one machine (``streamreason train`` and ``streamreason sft``):
AdamW with a constant or cosine schedule and warmup, grad-norm clipping, fp32 or bf16,
gradient checkpointing, optional LoRA (peft) and a frozen vision tower. Under ``torchrun``
(``WORLD_SIZE > 1``) the policy is sharded with FSDP2 ``fully_shard`` over gloo (CPU) or NCCL
(GPU); losses are aggregated over the global mini-batch exactly as verl's ``agg_loss`` does.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from verl.utils.debug.metrics import calculate_log_prob_diff
from verl.utils.torch_functional import entropy_from_logits

from streamreason.errors import ConfigError
from streamreason.rl.grpo import GRPOConfig, policy_loss, sequence_weights
from streamreason.rl.rows import TrainRow, collate, noop_row
from streamreason.rollout.attention import span_masked_inputs


@dataclass
class LoraConfig:
    """LoRA adapters on the language model (peft); ``rank = 0`` trains all weights."""

    rank: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class OptimConfig:
    """Optimizer and precision (ThinkStream RL: lr 2e-7, cosine, 3% warmup).

    Attributes:
        lr: peak learning rate.
        weight_decay, betas, eps: AdamW.
        schedule: ``constant`` or ``cosine`` (both after linear warmup).
        warmup_ratio: warmup steps as a fraction of all optimizer steps.
        grad_clip: max global grad norm (0 disables).
        dtype: ``float32`` or ``bfloat16`` parameters.
        gradient_checkpointing: recompute activations in backward.
        freeze_vision: keep the vision tower fixed (VST).
        lora: LoRA settings.
    """

    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"optim.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")


def world() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the default process group under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _all_reduce(value: float, op=dist.ReduceOp.SUM) -> float:
    """Reduces a Python float over the ranks; a no-op in one process.

    A world of one is common even when a process group exists: the in-process vLLM engine
    initialises its own (NCCL, world size 1). NCCL reduces only CUDA tensors.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.item()


def shard(items: list) -> list:
    """This rank's share of ``items`` (every ``world_size``-th from ``rank``; all of them in one
    process)."""
    rank, size = world()
    return items[rank::size]


def gather(items: list) -> list:
    """Every rank's ``items``, concatenated in rank order (collective; ``items`` in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return items
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def barrier() -> None:
    """Wait for every rank (a no-op in one process): e.g. all ranks have looked at a run
    directory before one of them writes into it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


ALPHA_COUNTS = ("step", "trajectory")
"""Where :meth:`Learner.sft_update` counts the decision classes for α (``sft.alpha_counts``)."""


def state_alphas(decisions: list[np.ndarray | None], groups: list) -> list[dict[int, float]]:
    """Per row, the class-balance weight of each decision class, from its group's class counts.

    Streamo's frequency balancing of the state tokens (arXiv 2512.21334, the focal loss of its
    training objective; maifoundations/Streamo ``swift/plugin/loss.py`` ``stream_focal_loss``,
    ``auto_alpha``)::

        α_c = (Σ_j n_j) / (C · n_c)

    with ``n_c`` the state tokens of class ``c`` in the group and ``C`` the classes present in
    it: the paper writes 1/3 for its three states, its code divides by the classes present, as
    here. ``Σ_c n_c α_c = Σ_j n_j``: balancing moves weight between classes, not in total.

    Args:
        decisions: per row, int ``[L]`` class ids (-1: not a decision token), or None.
        groups: per row, the key of the group it is counted with: one key for all rows counts
            the batch (``sft.alpha_counts=step``); a row's ``traj_index`` counts each trajectory
            alone (``trajectory``), as Streamo's loss does: it runs on one forward, and
            ``train.sh`` gives each forward one video (``per_device_train_batch_size 1``).

    Returns:
        One ``{class id: α}`` per row (empty for a row without decision labels).

    Example (4 silent, 1 response, 1 standby in one group; then per row):

    >>> rows = [np.array([0, 0, 0, 1, -1]), np.array([0, 2])]
    >>> state_alphas(rows, [0, 0])[1]
    {0: 0.5, 1: 2.0, 2: 2.0}
    >>> [{c: round(a, 3) for c, a in d.items()} for d in state_alphas(rows, [0, 1])]
    [{0: 0.667, 1: 2.0}, {0: 1.0, 2: 1.0}]
    """
    labels: dict = {}
    for d, g in zip(decisions, groups):
        if d is not None:
            labels.setdefault(g, []).append(d[d >= 0])
    alpha = {}
    for g, parts in labels.items():
        classes, counts = np.unique(np.concatenate(parts).astype(np.int64), return_counts=True)
        alpha[g] = {int(c): float(counts.sum() / (len(classes) * n)) for c, n in zip(classes, counts)}
    return [alpha.get(g, {}) if d is not None else {} for d, g in zip(decisions, groups)]


def focal_weights(logp: torch.Tensor, alpha: torch.Tensor, gamma: float) -> torch.Tensor:
    """Streamo's weight of a state token, ``w = α_c (1 − p_c)^γ`` with ``p_c = exp(logp)`` the
    probability of the gold state token (arXiv 2512.21334; ``stream_focal_loss``: ``pt`` from
    the softmax over the vocabulary, ``focal_weight = (1 - pt) ** gamma``). Elementwise.

    Not detached, as there: ``−w · log p`` is the focal loss (Lin et al., 2017) and its gradient
    goes through ``(1 − p)^γ``: ``d(−α (1 − p)^γ log p) / d log p = −α (1 − p)^γ + α γ p (1 − p)^(γ−1) log p``
    (−1.193 at p = 0.5, α = 2, γ = 2, against −0.5 for a detached weight). ``1 − p`` is floored at
    1e-12 so that γ < 1 keeps a finite gradient at p = 1.

    >>> focal_weights(torch.log(torch.tensor([0.5, 0.9])), torch.tensor([2.0, 0.5]), 2.0)
    tensor([0.5000, 0.0050])
    """
    if gamma == 0:
        return alpha
    return alpha * (-torch.expm1(logp)).clamp_min(1e-12) ** gamma


class Learner:
    """Trains the policy on :class:`~streamreason.rl.rows.TrainRow` batches.

    Args:
        model: the policy (a Qwen-VL ``...ForConditionalGeneration``), on its device.
        optim: optimizer settings.
        grpo: loss settings (clip ratios, aggregation, KL, mini/micro batches).
        total_steps: optimizer steps of the whole run (for the schedule).
        pad_id: padding token id.
        temperature: the rollout temperature; log-probs are ``log_softmax(logits / T)``.
        ref_model: frozen reference policy for the KL loss (needed when ``grpo.kl_coef > 0``).
        share_vision: run the vision tower once per distinct chunk of a mini-batch and feed its
            output to every row that holds the chunk (:class:`VisionCache`). Exact; off runs
            the tower on every row's chunks, as the model's own forward does. Used in one
            process only: under FSDP the tower runs inside each row's forward.
        engine_is_policy: the rows' log-probs come from this learner's own module (the
            transformers engine generating with it, as the trainer sets up in one process); with
            ``rl.recompute_old_logprobs=auto`` the old log-probs are then the rollout's, otherwise
            recomputed (:meth:`grpo_update`). The trainer passes False for vLLM and under torchrun.
    """

    def __init__(self, model, optim: OptimConfig, grpo: GRPOConfig, total_steps: int, pad_id: int,
                 temperature: float = 1.0, ref_model=None, share_vision: bool = True,
                 engine_is_policy: bool = True):  # fmt: skip
        from transformers import get_scheduler

        self.grpo, self.optim_cfg, self.pad_id = grpo, optim, pad_id
        self.recompute_old_logprobs = grpo.recomputes_old_logprobs(engine_is_policy)
        self.temperature = temperature if temperature > 0 else 1.0
        self.rank, self.world_size = world()
        self.device = next(model.parameters()).device
        if optim.freeze_vision:
            model.model.visual.requires_grad_(False)
        if optim.lora.rank > 0:
            from peft import LoraConfig as PeftLora
            from peft import get_peft_model

            lora = optim.lora
            model = get_peft_model(model, PeftLora(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                   target_modules=list(lora.target_modules)))  # fmt: skip
        if optim.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.world_size > 1:
            _shard(model)
        self.model = model
        self.share_vision = share_vision and self.world_size == 1
        if grpo.kl_coef > 0 and ref_model is None:
            raise ConfigError("rl.kl_coef > 0 needs a reference model")
        self.ref_model = ref_model
        self._filler: TrainRow | None = None
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                           weight_decay=optim.weight_decay)  # fmt: skip
        warmup = math.ceil(optim.warmup_ratio * total_steps)
        name = "cosine" if optim.schedule == "cosine" else "constant_with_warmup"
        self.scheduler = get_scheduler(
            name, self.optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
        )

    # -- forward ---------------------------------------------------------------------------
    def _forward(self, model, rows: list[TrainRow], vision: VisionCache | None = None, entropy: bool = False):
        """``(batch, logprobs, entropy)`` of a micro-batch: :func:`collate` and
        :meth:`_token_logprobs`, with the rows' video features from ``vision`` when given (the
        batch then carries no pixels)."""
        if vision is None:
            batch = collate(rows, self.pad_id)
            return (batch, *self._token_logprobs(model, batch, entropy))
        batch = collate(rows, self.pad_id, pixels=False)
        batch["pixel_values_videos"] = torch.empty(0)  # makes the model ask for video features
        with vision.serve([v for r in rows for v in r.videos]):
            return (batch, *self._token_logprobs(model, batch, entropy))

    def _vision(self, model, rows: list[TrainRow], grad: bool) -> VisionCache | None:
        """A :class:`VisionCache` over ``rows``' chunks, or None where sharing is off or the rows
        hold no video. ``grad`` only where the vision tower trains."""
        if not self.share_vision or not any(r.videos for r in rows):
            return None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        grad = grad and any(p.requires_grad for p in base.model.visual.parameters())
        return VisionCache(base.model, [v for r in rows for v in r.videos], self.device, grad)

    def _token_logprobs(self, model, batch, entropy: bool = False):
        """``(logprobs, entropy)`` of the target tokens ``[B, L-1]`` (entropy None unless asked).

        Only positions that some row of the micro-batch trains on (loss mask > 0, or a decision
        label) get logits, through the model's ``logits_to_keep``; the others are 0. A turn
        row's loss covers its replies, about 1% of its tokens, and the ``[B, L, vocab]`` fp32
        log-softmax over all positions was most of the learner's memory.
        """
        inputs = {k: v.to(self.device) for k, v in batch.items() if k not in _TARGET_KEYS}
        if (until := inputs.pop("visible_until", None)) is not None:  # memory.eviction=mask
            inputs = span_masked_inputs(model, inputs, until)
        need = (batch["loss_mask"] > 0).any(0) | (batch["decision"] >= 0).any(0)
        pos = need.nonzero()[:, 0] if need.any() else torch.tensor([len(need) - 1])  # keep the graph
        pos = pos.to(self.device)
        logits = model(**inputs, use_cache=False, logits_to_keep=pos).logits.float() / self.temperature
        picked = torch.log_softmax(logits, -1).gather(-1, batch["targets"].to(self.device)[:, pos, None])[
            ..., 0
        ]
        logp = picked.new_zeros(len(picked), len(need))
        logp[:, pos] = picked
        ent = None
        if entropy:
            ent = logp.new_zeros(logp.shape)
            ent[:, pos] = entropy_from_logits(logits)
        return logp, ent

    def _micro_batches(self, rows: list[TrainRow]) -> list[tuple[list[TrainRow], bool]]:
        """``rows`` cut into micro-batches, padded to the same count on every rank.

        FSDP runs collectives inside every forward and backward, so all ranks must run the
        same number; a rank with fewer rows runs extra passes on a copy of a row with its
        loss mask zeroed (the flag is False for those), which add nothing to the gradient.
        """
        m = self.grpo.micro_batch_rows
        micros = [(rows[j : j + m], True) for j in range(0, len(rows), m)]
        if rows:
            self._filler = rows[0]
        n = int(_all_reduce(len(micros), dist.ReduceOp.MAX))
        if len(micros) < n:
            if self._filler is None:
                raise RuntimeError(f"rank {self.rank} has no row to pad its micro-batches with")
            micros += [([noop_row(self._filler)], False)] * (n - len(micros))
        return micros

    @torch.no_grad()
    def logprobs(self, rows: list[TrainRow], reference: bool = False) -> list[np.ndarray]:
        """Per row, float32 ``[L]``: log-prob of token ``i`` given the tokens before it (0 at 0).

        ``reference=True`` scores with the frozen reference model.
        """
        model = self.ref_model if reference else self.model
        was_training = model.training
        model.eval()
        out = []
        micros = self._micro_batches(rows)
        vision = self._vision(model, [r for m, _ in micros for r in m], grad=False)
        for chunk, real in micros:
            _, logp, _ = self._forward(model, chunk, vision)
            for r, lp in zip(chunk if real else [], logp.cpu().numpy()):
                out.append(np.concatenate([[0.0], lp[: len(r) - 1]]).astype(np.float32))
        model.train(was_training)
        return out

    # -- updates ---------------------------------------------------------------------------
    def grpo_update(
        self, rows: list[TrainRow], ref_logprobs: list[np.ndarray] | None = None, progress: bool = False
    ) -> dict[str, float]:
        """``ppo_epochs`` × ``mini_batches`` optimizer steps of the clipped policy loss (verl).

        ``progress`` shows a bar over the update's rows (all epochs) with training tokens/s.

        Rows are shuffled with torch's generator (checkpointed RNG) each epoch. The old
        log-probs, the PPO ratio's denominator, are the rollout's (``TrainRow.old_logprobs``), or
        with ``recompute_old_logprobs`` the learner's own on the current weights, computed
        without grad before the first update as verl's ``compute_log_prob``
        (``verl/workers/actor/dp_actor.py``) does, each epoch-0 mini-batch in the micro-batches
        and vision-feature groups its update then runs, so that the first mini-batch's ratios
        are exactly 1. The rows keep the rollout's log-probs.

        In the ``seq-mean-*`` loss modes each trajectory's rows of a mini-batch count as one
        sequence (:func:`~streamreason.rl.grpo.sequence_weights`).

        Returns:
            Means over micro-batches of the loss metrics, plus ``grad_norm`` and ``lr``, and
            ``skipped_nonfinite``: how many of the optimizer steps were skipped for a NaN or
            inf loss or gradient (:meth:`_step`). When recomputing, also verl's
            ``rollout_probs_diff_{max,mean,std}`` (``verl/utils/debug/metrics.py``,
            ``calculate_debug_metrics``): ``|exp(rollout log-prob) − exp(recomputed)|`` over the
            loss tokens of all ranks.
        """
        if ref_logprobs is not None:
            for r, ref in zip(rows, ref_logprobs):
                r.ref_logprobs = ref
        epochs = [
            [
                [rows[i] for i in mb]
                for mb in np.array_split(torch.randperm(len(rows)).numpy(), self.grpo.mini_batches)
            ]
            for _ in range(self.grpo.ppo_epochs)
        ]
        sums: dict[str, list[float]] = {}
        old_of: dict[int, np.ndarray] = {}
        if self.recompute_old_logprobs:
            for mini in epochs[0]:
                old_of.update(zip(map(id, mini), self.logprobs(mini)))
            sums.update({k: [v] for k, v in self._rollout_mismatch(rows, old_of).items()})
        seq_mode = self.grpo.loss_agg_mode.startswith("seq-mean")
        self.model.train()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(rows) * len(epochs), desc="update rows", unit="row", leave=False, disable=not progress
        )
        start, tokens_done = time.perf_counter(), 0
        for minis in epochs:
            for mini in minis:
                tokens = _all_reduce(float(sum(r.num_loss_tokens for r in mini)))
                weight_of: dict[int, float] = {}
                if seq_mode:
                    trajs = _all_reduce(float(len({r.traj_index for r in mini if r.num_loss_tokens > 0})))
                    w = sequence_weights([r.num_loss_tokens for r in mini], [r.traj_index for r in mini],
                                         self.grpo.loss_agg_mode, trajs)  # fmt: skip
                    weight_of = dict(zip(map(id, mini), w.tolist()))
                mini_metrics: dict[str, list[float]] = {}
                finite = True
                micros = self._micro_batches(mini)
                vision = self._vision(self.model, [r for m, _ in micros for r in m], grad=True)
                for micro, real in micros:
                    batch, logp, ent = self._forward(self.model, micro, vision, entropy=True)
                    dev = {k: batch[k].to(self.device) for k in ("old_logprobs", "advantages", "loss_mask")}
                    if old_of and real:
                        dev["old_logprobs"] = _shifted([old_of[id(r)] for r in micro], logp.shape).to(
                            self.device
                        )
                    ref = None
                    if self.ref_model is not None:
                        ref = _shifted([r.ref_logprobs for r in micro], logp.shape).to(self.device)
                    seq_w = None
                    if seq_mode:
                        seq_w = torch.tensor([weight_of.get(id(r), 0.0) if real else 0.0 for r in micro])
                    loss, metrics = policy_loss(
                        logp, dev["old_logprobs"], dev["advantages"], dev["loss_mask"], self.grpo,
                        ref_log_prob=ref, entropy=ent, batch_num_tokens=tokens, seq_weights=seq_w,
                    )  # fmt: skip
                    finite = finite and bool(torch.isfinite(loss))
                    if real:
                        bar.update(len(micro))
                        tokens_done += sum(len(r) for r in micro)
                        bar.set_postfix(
                            tokens_s=f"{tokens_done / max(time.perf_counter() - start, 1e-9):,.0f}"
                        )
                    (loss * self.world_size).backward()  # FSDP averages gradients over ranks (verl's dp_size)
                    for k, v in metrics.items():
                        mini_metrics.setdefault(k, []).append(v)
                if vision is not None:
                    vision.backward()
                # loss terms are each micro-batch's share of the mini-batch: they add up; rates average
                for k, v in mini_metrics.items():
                    agg = np.sum(v) if k in _SHARE_METRICS else np.mean(v)
                    sums.setdefault(k, []).append(
                        _all_reduce(float(agg)) if k in _SHARE_METRICS else float(agg)
                    )
                for k, v in self._step(finite).items():
                    sums.setdefault(k, []).append(v)
        bar.close()
        return {k: float(np.sum(v) if k == "skipped_nonfinite" else np.mean(v)) for k, v in sums.items()}

    def _rollout_mismatch(self, rows: list[TrainRow], old_of: dict[int, np.ndarray]) -> dict[str, float]:
        """verl's ``rollout_probs_diff_{max,mean,std}`` between the rows' rollout log-probs and
        the recomputed ones ``old_of`` (by row identity), over every rank's loss tokens."""
        mask = [r.loss_mask > 0 for r in rows]
        rollout = torch.from_numpy(np.concatenate([r.old_logprobs[m] for r, m in zip(rows, mask)] or [[]]))
        actor = torch.from_numpy(np.concatenate([old_of[id(r)][m] for r, m in zip(rows, mask)] or [[]]))
        diff = calculate_log_prob_diff(
            actor.double().exp(), rollout.double().exp(), torch.ones_like(actor).bool()
        )
        n = _all_reduce(float(len(diff)))
        if n == 0:
            return {}
        mean = _all_reduce(float(diff.sum())) / n
        sq = _all_reduce(float((diff**2).sum()))
        return {
            "rollout_probs_diff_max": _all_reduce(float(diff.max()) if len(diff) else 0.0, dist.ReduceOp.MAX),
            "rollout_probs_diff_mean": mean,
            "rollout_probs_diff_std": math.sqrt(max(sq - n * mean**2, 0.0) / max(n - 1, 1.0)),
        }

    def sft_update(
        self, rows: list[TrainRow], balance: bool = True, focal_gamma: float = 0.0, alpha_counts: str = "step"
    ) -> dict[str, float]:
        """One optimizer step of weighted cross-entropy on the rows' masked tokens.

        Every target token has weight 1 except the decision token of each turn (``<silent>``,
        ``<response>``, ``<standby>``), weighted as Streamo weights its state tokens (arXiv
        2512.21334; ``swift/plugin/loss.py`` ``stream_focal_loss``): ``w = α_c (1 − p_c)^γ``,
        ``α_c`` from the class counts of the step's rows or of each trajectory (``alpha_counts``,
        :func:`state_alphas`; 1 without ``balance``) and the focal term with γ = ``focal_gamma``
        (Streamo: 2; 0 = none; :func:`focal_weights`, gradient through ``(1 − p)^γ``).
        Loss = Σ w·(−log p) / (masked tokens in the global batch), Streamo's normalisation too
        (``weighted_loss.sum() / num_items_in_batch``); one backward per micro-batch.

        Returns:
            ``loss``, ``decision_acc`` (p > 0.5 on decision tokens), ``decision_focal`` (mean
            ``(1 − p)^γ`` on them, before the step), ``grad_norm``, ``lr``,
            ``skipped_nonfinite`` (1 when a NaN or inf loss or gradient skipped the step).

        Raises:
            ValueError: ``alpha_counts`` is not one of :data:`ALPHA_COUNTS`.
        """
        if alpha_counts not in ALPHA_COUNTS:
            raise ValueError(f"alpha_counts must be one of {ALPHA_COUNTS}, got {alpha_counts!r}")
        self.model.train()
        groups = [r.traj_index if alpha_counts == "trajectory" else 0 for r in rows]
        alphas = state_alphas([r.decision for r in rows], groups) if balance else [{} for _ in rows]
        alpha_of = {id(r): a for r, a in zip(rows, alphas)}
        tokens = _all_reduce(float(sum(r.num_loss_tokens for r in rows)))
        loss_sum, hits, n_dec, focal_sum = 0.0, 0, 0, 0.0
        micros = self._micro_batches(rows)
        vision = self._vision(self.model, [r for m, _ in micros for r in m], grad=True)
        for micro, _ in micros:
            batch, logp, _ = self._forward(self.model, micro, vision)
            w = batch["loss_mask"].to(self.device)
            dec = batch["decision"].to(self.device)
            is_dec = dec >= 0
            if is_dec.any():
                alpha = torch.ones_like(w)
                for j, r in enumerate(micro):
                    for c, v in alpha_of.get(id(r), {}).items():
                        alpha[j][dec[j] == c] = v
                w = torch.where(is_dec, focal_weights(logp, alpha, focal_gamma), w)
                hits += int((logp[is_dec] > math.log(0.5)).sum())
                n_dec += int(is_dec.sum())
                lp = logp[is_dec].detach()
                focal_sum += float(focal_weights(lp, torch.ones_like(lp), focal_gamma).sum())
            loss = (
                -(w * logp).sum() / max(tokens, 1.0) * self.world_size
            )  # FSDP averages gradients over ranks
            loss.backward()
            loss_sum += float(loss.detach()) / self.world_size
        if vision is not None:
            vision.backward()
        metrics = {"loss": _all_reduce(loss_sum), "decision_acc": hits / max(n_dec, 1),
                   "decision_focal": focal_sum / max(n_dec, 1)}  # fmt: skip
        metrics.update(self._step(math.isfinite(loss_sum)))
        return metrics

    def schedule_to(self, update: int) -> None:
        """Set the learning-rate schedule to optimizer update ``update`` (0-based), so the next
        :meth:`_step` uses the schedule's value there, whatever happened before (a GRPO step with
        nothing to train on runs no update but its index still passes)."""
        self.scheduler.last_epoch = update - 1
        with warnings.catch_warnings():  # torch warns when the schedule moves before any optimizer step
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()

    def _step(self, loss_finite: bool = True) -> dict[str, float]:
        """Clip and apply the accumulated gradients, unless the loss (on any rank) or the
        gradient norm is NaN or inf: then the update is skipped (``skipped_nonfinite`` = 1),
        the gradients dropped and the weights and optimizer state left as they were. The
        schedule advances either way, so a skip does not shift the later learning rates."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        lr = self.scheduler.get_last_lr()[0]
        finite = bool(torch.isfinite(norm)) and _all_reduce(float(loss_finite), dist.ReduceOp.MIN) > 0
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # torch warns when the schedule moves before any optimizer step
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        return {"grad_norm": float(norm), "lr": lr, "skipped_nonfinite": float(not finite)}

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Full (unsharded) model, optimizer and scheduler states, on CPU (collective under FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        return {"model": model_sd, "optimizer": optim_sd, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=opts)  # fmt: skip
        self.scheduler.load_state_dict(state["scheduler"])

    def policy_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's full weights under Hugging Face parameter names (LoRA merged in), for an
        engine that holds its own copy (vLLM). Gathers FSDP shards on every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        lora = self.optim_cfg.lora.rank > 0
        if lora:
            self.model.merge_adapter()
        try:
            sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
            for name, tensor in sd.items():
                if lora:
                    if "lora_" in name:
                        continue
                    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
                yield name, tensor
        finally:
            if lora:
                self.model.unmerge_adapter()

    def export(self, out_dir, processor) -> None:
        """Write a plain Hugging Face checkpoint (LoRA merged) that any engine can load."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = self.model
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return
        if self.optim_cfg.lora.rank > 0:
            model = model.merge_and_unload()
            sd = None
        model.save_pretrained(out_dir, state_dict=sd)
        processor.save_pretrained(out_dir)


class VisionCache:
    """The vision tower's features of each distinct chunk of a set of rows, computed once.

    The B = 1 rows of a trajectory each hold the W chunks of their context, and the G
    trajectories of a stream hold the same chunks, so a mini-batch of turn rows runs the tower
    on each chunk up to W·G times when every row's forward runs it. The cache runs it once per
    distinct :class:`~streamreason.rollout.chat.VideoSegment` (by identity: the rollout loop
    shares a chunk's segment among a stream's trajectories), in groups of at most
    ``max_patches`` patches, and serves the features to the model's forward through its
    ``get_video_features`` while a micro-batch runs (:meth:`serve`).

    With ``grad``, the features are detached leaves: each micro-batch's backward adds into
    their ``.grad``, and :meth:`backward` runs the tower's backward once with the sums. This is
    exact: the loss is a sum over rows, so the tower's gradient is the tower's vector-Jacobian
    product with the summed feature gradients (only the floating-point summation order differs).

    Args:
        inner: the ``...VLModel`` under the ``ForConditionalGeneration`` (``model.model``).
        segments: the chunks, in any order, repeats allowed.
        device: where the tower runs.
        grad: keep the tower's graph for :meth:`backward`.
        max_patches: patches per tower call (bounds the transient activations of no-grad calls).
    """

    def __init__(self, inner, segments, device, grad: bool, max_patches: int = 1 << 16):
        self._inner, self._grad = inner, grad
        self._features: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self._graph: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tower output, its leaf)
        unique = list({id(s): s for s in segments}.values())
        self.num_chunks = len(unique)
        group: list = []
        for seg in unique:
            group.append(seg)
            if sum(len(g.tensors["pixel_values_videos"]) for g in group) >= max_patches or seg is unique[-1]:
                self._encode(group, device)
                group = []

    def _encode(self, group, device) -> None:
        from streamreason.rollout.chat import concat_videos

        tensors = concat_videos(group)
        with torch.set_grad_enabled(self._grad):
            out = self._inner.get_video_features(
                tensors["pixel_values_videos"].to(device), tensors["video_grid_thw"].to(device)
            )
        self._output_type = type(out)
        sizes = [len(e) for e in out.pooler_output]
        outputs = [torch.cat(out.pooler_output), *(getattr(out, "deepstack_features", None) or [])]
        leaves = [o.detach().requires_grad_(self._grad) for o in outputs]
        self._graph += list(zip(outputs, leaves)) if self._grad else []
        pieces = [leaf.split(sizes) for leaf in leaves]
        for j, seg in enumerate(group):
            self._features[id(seg)] = (pieces[0][j], [p[j] for p in pieces[1:]])

    @contextlib.contextmanager
    def serve(self, segments):
        """While active, the model's ``get_video_features`` returns the features of
        ``segments`` (a micro-batch's chunks in row order) instead of running the tower."""
        feats = [self._features[id(s)] for s in segments]
        out = self._output_type(pooler_output=tuple(f[0] for f in feats))
        if feats[0][1]:  # Qwen3-VL deepstack features: per layer, all chunks concatenated
            out.deepstack_features = [torch.cat(layer) for layer in zip(*(f[1] for f in feats))]
        self._inner.get_video_features = lambda *args, **kwargs: out
        try:
            yield
        finally:
            del self._inner.get_video_features  # back to the class's method

    def backward(self) -> None:
        """The tower's backward with the gradients the micro-batches left on the features."""
        pairs = [(o, leaf.grad) for o, leaf in self._graph if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        self._graph = []


_SHARE_METRICS = ("pg_loss", "kl", "entropy", "loss")
_TARGET_KEYS = ("targets", "loss_mask", "old_logprobs", "advantages", "decision")


def _shifted(per_row: list[np.ndarray], shape) -> torch.Tensor:
    """Per-row ``[L]`` arrays as a right-padded ``[B, L-1]`` tensor aligned with targets."""
    out = torch.zeros(shape)
    for j, a in enumerate(per_row):
        out[j, : len(a) - 1] = torch.from_numpy(a[1:])
    return out


def _shard(model) -> None:
    """FSDP2: shard each decoder layer and vision block, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in [*base.model.language_model.layers, *base.model.visual.blocks]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
