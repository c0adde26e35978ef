"""Adaptive Sparse ViT (Liu et al. 2022): learned thresholds on head-weighted class attention, FLOPs budget.

At each stage (default 0-indexed blocks 4, 7, 10 of 12, scaled to the depth) a token survives if its score
s_i = sum_h w_hi A_h[cls, i] (w_hi: the share of head h in the size of token i's attention output) reaches
the stage's learned threshold theta (by default in units of uniform attention, n s_i, see
:class:`ASViTConfig`). In training the decision is hard in the forward and soft in the
backward (straight-through estimator): the kept tokens' outputs are multiplied by a gate whose value is 1
and whose gradient is that of sigmoid((s - theta) / T), so the task loss reaches the thresholds, and
:func:`ste_flops_ratio` gives FLOPs whose value is the hard count's and whose gradient is the soft mask's.
The training forward therefore computes exactly what inference computes. Recipe:
:func:`fit_asvit` (loss = CE + 2.0 |FLOPs fraction - rho| + 0.5 KL).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.config import JsonConfig, check_numbers
from trimformer.core.flops import encoder_flops
from trimformer.core.scoring import head_weighted_class_attention
from trimformer.core.selection import hard_threshold_mask, protect_prefix, soft_threshold_mask
from trimformer.data.batching import Collate, calibration_batches
from trimformer.engine.hooks import Decision, StraightThroughKeep
from trimformer.engine.view import layer_widths
from trimformer.methods.stages import Capture, CapturingPolicy, StageRecord, check_stage_list, policy_of, stage_blocks
from trimformer.pruned import TokenPrunedModel
from trimformer.train.calibration import calibrate_knob
from trimformer.train.loop import TrainConfig, get_accelerator, param_groups, train_steps
from trimformer.train.losses import distillation_kl

ASVIT_DEFAULT_STAGES = (4, 7, 10)


THRESHOLD_UNITS = ("relative", "absolute")
_DEFAULT_TEMPERATURE = {"absolute": 1e-4, "relative": 0.02}  # 1e-4 at DeiT's 197 tokens = 0.02 x uniform
_DEFAULT_THRESHOLD_LR = {"absolute": 5e-6, "relative": 1e-3}


@dataclass
class ASViTConfig(JsonConfig):
    """AS-ViT method and training recipe.

    stages: 0-indexed pruning blocks; None = blocks 4, 7, 10 of 12 scaled to the depth.
    threshold_units: 'absolute' compares the score s_i with theta as the paper does; 'relative' (default)
        compares n * s_i, n the live tokens of the image at that block, i.e. the score in units of uniform
        attention. The paper's form at a fixed n, but one theta then means the same at every stage, depth
        and resolution (a raw score shrinks as 1/n), so one calibrated value starts every stage inside its
        score range, where the straight-through gradient is not zero.
    temperature: T of the soft mask sigmoid((score - theta) / T) that gives the gradient; None = 1e-4
        (absolute, the paper's) or 0.02 (relative: 1e-4 x 197 tokens).
    target_flops: rho, the wanted fraction of dense encoder FLOPs; budget_weight and kd_weight weigh
        |FLOPs fraction - rho| and the KL to the dense teacher (paper: 2.0 and 0.5).
    init_threshold: starting threshold of every stage; None = calibrate one common threshold to reach
        ``target_flops`` on ``calibration_batches`` before training (until then the policy keeps every
        token). threshold_lr: learning rate of the thresholds (own group, no weight decay); None = 1e-3
        (relative) or 5e-6 (absolute).
    """

    stages: tuple[int, ...] | None = None
    threshold_units: str = "relative"
    temperature: float | None = None
    target_flops: float = 0.7
    budget_weight: float = 2.0
    kd_weight: float = 0.5
    init_threshold: float | None = None
    threshold_lr: float | None = None
    steps: int = 200
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        check_numbers(self, counts=("steps",), positive_counts=("calibration_batches",))
        self.stages = check_stage_list(self.stages)
        if self.threshold_units not in THRESHOLD_UNITS:
            raise ValueError(f"threshold_units must be one of {THRESHOLD_UNITS}, got {self.threshold_units!r}")
        if self.temperature is None:
            self.temperature = _DEFAULT_TEMPERATURE[self.threshold_units]
        if self.threshold_lr is None:
            self.threshold_lr = _DEFAULT_THRESHOLD_LR[self.threshold_units]
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.target_flops <= 1.0:
            raise ValueError(f"target_flops (rho) is a fraction of dense FLOPs in (0, 1], got {self.target_flops}")
        if self.budget_weight < 0 or self.kd_weight < 0:
            raise ValueError("budget_weight and kd_weight must be >= 0")
        if self.init_threshold is not None and self.init_threshold < 0:
            raise ValueError(f"init_threshold is a score, >= 0, got {self.init_threshold}")
        if self.threshold_lr <= 0:
            raise ValueError(f"threshold_lr must be > 0, got {self.threshold_lr}")
        if self.steps < 0 or self.calibration_batches < 1:
            raise ValueError("steps must be >= 0 and calibration_batches >= 1")

    @property
    def max_threshold(self) -> float:
        """A threshold that no patch token reaches (upper end of calibration)."""
        return 1.0 if self.threshold_units == "absolute" else 1e4


class ASViTPolicy(CapturingPolicy):
    """Learned per-stage thresholds; straight-through masks in training mode, hard masks in eval mode."""

    method = "asvit"

    def __init__(self, num_layers: int, config: ASViTConfig):
        super().__init__(num_layers)
        self.asvit_config = config
        self.stages = stage_blocks(config.stages, ASVIT_DEFAULT_STAGES, num_layers)
        init = 0.0 if config.init_threshold is None else config.init_threshold
        self.thresholds = nn.Parameter(torch.full((len(self.stages),), float(init)))  # [S]

    def config(self) -> ASViTConfig:
        return self.asvit_config

    def decision(self, layer: int, num_prefix: int) -> Decision | None:
        if layer not in self.stages:
            return None
        theta = self.thresholds[self.stages.index(layer)]
        temperature = self.asvit_config.temperature
        straight_through = self.training
        relative = self.asvit_config.threshold_units == "relative"

        def decide(probs: torch.Tensor, alive: torch.Tensor,
                   values: torch.Tensor) -> torch.Tensor | StraightThroughKeep:
            scores = head_weighted_class_attention(probs, values)  # [B, N]
            if relative:  # in units of uniform attention over the live tokens
                scores = scores * alive.sum(dim=1, keepdim=True).to(scores.dtype)
            hard = protect_prefix(hard_threshold_mask(scores, theta.detach()), num_prefix) & alive  # [B, N]
            if not straight_through:
                self._record(StageRecord(layer, scores, alive, hard))
                return hard
            soft = protect_prefix(soft_threshold_mask(scores, theta, temperature), num_prefix)  # [B, N]
            self._record(StageRecord(layer, scores, alive, hard, soft))
            gate = hard.to(soft.dtype) + (soft - soft.detach())  # value: the hard mask; gradient: the soft one
            return StraightThroughKeep(hard, gate)

        return Decision(decide, needs_values=True)


def ste_flops_ratio(n_in: torch.Tensor, n_out: torch.Tensor, dense_flops: torch.Tensor, capture: Capture,
                    hidden_size: int, mlp_size: int | torch.Tensor,
                    attn_width: torch.Tensor | None = None) -> torch.Tensor:
    """Batch FLOPs / dense FLOPs whose value is the hard one and whose gradient comes from the soft masks.

    n_in, n_out: [B, L] hard counts of a forward (``PrunedOutput``); dense_flops: [B]; ``capture``: that
    forward's records. Each stage's count is multiplied by c / c.detach(), c = sum over its live tokens of
    (hard + soft - soft.detach()), from that block on: a token more kept at a stage carries through every
    later block, proportionally. Returns a scalar.
    """
    num_layers = n_in.shape[1]
    factor = torch.ones_like(n_in[:, 0])  # [B]
    ins, outs = [], []
    stages = {r.layer: r for r in capture.pruned()}
    for layer in range(num_layers):
        ins.append(n_in[:, layer] * factor)
        record = stages.get(layer)
        if record is not None and record.soft is not None:
            live = record.alive.to(record.soft.dtype)  # [B, N]
            ste = record.keep.to(record.soft.dtype) + (record.soft - record.soft.detach())  # [B, N]
            count = (ste * live).sum(dim=1)
            factor = factor * count / count.detach().clamp_min(1.0)
        outs.append(n_out[:, layer] * factor)
    flops = encoder_flops(hidden_size, mlp_size, torch.stack(ins, dim=1), torch.stack(outs, dim=1),
                          attn_width=attn_width)  # [B]
    return flops.sum() / dense_flops.sum()


def calibrate_asvit(model: TokenPrunedModel, batches: list[dict[str, torch.Tensor]], target: float,
                    ) -> tuple[float, float]:
    """Set every stage's threshold to one value that reaches ``target`` FLOPs on ``batches`` (hard masks)."""
    policy: ASViTPolicy = policy_of(model, ASViTPolicy)

    def set_threshold(value: float) -> None:
        with torch.no_grad():
            policy.thresholds.fill_(value)

    # the upper end doubles until the target is reached (relative scores go up to the token count)
    return calibrate_knob(model, batches, target, set_threshold, decreasing=True,
                          grow_limit=policy.config().max_threshold, iterations=20)


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A gradient-free copy of ``model`` in eval mode (the dense teacher of AS-ViT)."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def fit_asvit(model: TokenPrunedModel, data: Sequence, collate: Collate, config: TrainConfig,
              state_dir: str | Path | None = None, teacher: nn.Module | None = None) -> dict:
    """AS-ViT: (calibrate the thresholds to rho) -> train weights and thresholds with
    CE + budget_weight |FLOPs fraction - rho| + kd_weight KL(dense teacher || student).

    ``teacher`` (a transformers classifier): default a frozen copy of ``model.model`` taken now. The FLOPs
    fraction is the batch's, straight-through (hard value, soft-mask gradient). Trains in masked mode; leaves the model
    in eval mode and its previous execution mode. Returns the calibration, per-step logs and final thresholds.
    """
    policy: ASViTPolicy = policy_of(model, ASViTPolicy)
    cfg = policy.config()
    history: dict = {}
    if cfg.init_threshold is None:
        batches = calibration_batches(data, collate, config.batch_size, cfg.calibration_batches, seed=config.seed)
        history["initial_threshold"], history["initial_ratio"] = calibrate_asvit(model, batches, cfg.target_flops)
    teacher = (teacher if teacher is not None else frozen_teacher(model.model)).to(get_accelerator().device)
    blocks = model.adapter.blocks(model.model)
    hidden, (attn_width, mlp) = blocks[0].hidden_size, layer_widths(blocks)  # per layer once heads were pruned
    mode_before, model.mode = model.mode, "masked"

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor], step: int):
        pixels, labels = batch["pixel_values"], batch["labels"]
        with torch.no_grad():
            teacher_logits = teacher(pixel_values=pixels).logits  # [B, C]
        with policy.capture() as cap:
            out = m(pixel_values=pixels)
        ce = F.cross_entropy(out.logits, labels)
        ratio = ste_flops_ratio(out.n_in, out.n_out, out.dense_flops, cap, hidden, mlp, attn_width)
        budget = (ratio - cfg.target_flops).abs()
        kd = distillation_kl(out.logits, teacher_logits)
        loss = ce + cfg.budget_weight * budget + cfg.kd_weight * kd
        return loss, {"ce": float(ce.detach()), "kd": float(kd.detach()), "flops": float(ratio.detach())}

    threshold_ids = {id(policy.thresholds)}
    groups = param_groups(model, config.lr, config.weight_decay, threshold_ids, config.head_lr)
    groups.append({"params": [policy.thresholds], "lr": cfg.threshold_lr, "weight_decay": 0.0})
    try:
        history["train"] = train_steps(model, loss_fn, groups, data, collate, config, cfg.steps, "asvit", state_dir)
    finally:
        model.mode = mode_before
    history["thresholds"] = policy.thresholds.detach().tolist()
    model.eval()
    return history
