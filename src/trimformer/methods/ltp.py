"""Learned Token Pruning (Kim et al., KDD 2022): per-layer learned thresholds on attention importance; the config,
the policy and the training recipe (:func:`fit_ltp`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trimformer.config import JsonConfig, check_numbers
from trimformer.core.scoring import ltp_importance
from trimformer.core.selection import hard_threshold_mask, protect_prefix, soft_threshold_mask
from trimformer.data.batching import Collate, calibration_batches
from trimformer.engine.hooks import Decision
from trimformer.engine.linears import tensor_stamp
from trimformer.engine.policy import PruningPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.train.calibration import calibrate_knob
from trimformer.train.finetune import finetune_under_pruning
from trimformer.train.loop import TrainConfig, param_groups, train_steps


@dataclass
class LTPConfig(JsonConfig):
    """LTP recipe.

    final_threshold: base threshold of the last layer; the base ramps linearly from
        final/L in the first layer to ``final`` (as in the official code), then a learned part is added.
    temperature: T of the soft mask sigmoid((score - threshold) / T).
    lambda_: weight of the mean-mask regulariser (used when ``target_flops`` is None).
    target_flops: wanted fraction of dense FLOPs; replaces the lambda search by threshold calibration
        and a budget loss ``budget_weight * |FLOPs fraction - target|`` in the soft stage.
    """

    final_threshold: float = 0.01
    temperature: float = 1e-3
    lambda_: float = 0.1
    target_flops: float | None = 0.5
    budget_weight: float = 2.0
    soft_steps: int = 200
    hard_steps: int = 200
    threshold_lr: float = 2e-5
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        check_numbers(self, counts=("soft_steps", "hard_steps"), positive_counts=("calibration_batches",),
                      nonnegative=("lambda_", "budget_weight"))
        if self.threshold_lr <= 0:
            raise ValueError(f"threshold_lr must be > 0, got {self.threshold_lr}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.target_flops is not None and not 0.0 < self.target_flops <= 1.0:
            raise ValueError(f"target_flops is a fraction of dense FLOPs in (0, 1], got {self.target_flops}")
        if self.final_threshold < 0:
            raise ValueError("final_threshold must be >= 0")


class LTPThresholds(nn.Module):
    """threshold_l = scale * base_l + learned_l; ``scale`` is set by FLOPs calibration, not by gradients."""

    def __init__(self, num_layers: int, final_threshold: float):
        super().__init__()
        ramp = torch.arange(1, num_layers + 1, dtype=torch.float32) / num_layers
        self.register_buffer("base", ramp * final_threshold)
        self.register_buffer("scale", torch.tensor(1.0))
        self.learned = nn.Parameter(torch.zeros(num_layers))

    def forward(self) -> torch.Tensor:
        return self.scale * self.base + self.learned  # [L]


class LTPPolicy(PruningPolicy):
    """Soft stage (``stage='soft'``): differentiable masks; hard stage: binary masks, frozen thresholds."""

    method = "ltp"

    def __init__(self, num_layers: int, config: LTPConfig, stage: str = "hard"):
        super().__init__(num_layers)
        self.ltp_config = config
        self._frozen: tuple[tuple, list[float]] | None = None  # (stamp, thresholds as floats) at inference
        self.thresholds = LTPThresholds(num_layers, config.final_threshold)
        self.stage = stage

    @property
    def stage(self) -> str:
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        if value not in ("soft", "hard"):
            raise ValueError(f"LTP stage must be 'soft' or 'hard', got {value!r}")
        self._stage = value

    def config(self) -> LTPConfig:
        return self.ltp_config

    def decision(self, layer: int, num_prefix: int) -> Decision:
        soft = self.stage == "soft"
        # hard stage: thresholds are frozen, so their cached float values serve (no threshold arithmetic per block)
        # (compiled: the tensors, which a graph reads without a break)
        frozen = not soft and not torch.compiler.is_compiling()
        threshold = self._frozen_thresholds()[layer] if frozen else self.thresholds()[layer]
        temperature = self.ltp_config.temperature

        def decide(probs: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
            scores = ltp_importance(probs, alive)  # [B, N]
            if soft:
                mask = soft_threshold_mask(scores, threshold, temperature)
            else:
                mask = hard_threshold_mask(scores, threshold)
            return protect_prefix(mask, num_prefix)

        return Decision(decide, accepts_all_live=True)

    def _frozen_thresholds(self) -> list[float]:
        """The thresholds as Python floats (exactly the float32 values), cached while their tensors are unchanged."""
        parts = (self.thresholds.base, self.thresholds.scale, self.thresholds.learned)
        stamp = tensor_stamp(*parts)
        if stamp is None:
            return self.thresholds().tolist()
        if self._frozen is None or self._frozen[0] != stamp:
            self._frozen = (stamp, self.thresholds().tolist())
        return self._frozen[1]


def calibrate_ltp(model: TokenPrunedModel, batches: list[dict[str, torch.Tensor]], target: float,
                  ) -> tuple[float, float]:
    """Scale the base thresholds so that hard LTP reaches ``target`` FLOPs on ``batches`` -> (scale, ratio)."""
    policy: LTPPolicy = model.policy  # type: ignore[assignment]
    stage, policy.stage = policy.stage, "hard"
    try:
        return calibrate_knob(model, batches, target, policy.thresholds.scale.fill_, decreasing=True,
                              grow_limit=2**12)
    finally:
        policy.stage = stage


def fit_ltp(model: TokenPrunedModel, data: Sequence, collate: Collate, config: TrainConfig,
            state_dir: str | Path | None = None) -> dict:
    """LTP's recipe: (calibrate to the FLOPs target) -> soft stage (thresholds learned with the weights, masked
    execution) -> (recalibrate) -> hard stage (thresholds frozen, weights fine-tuned). Returns the history and
    leaves the model packed, in eval mode."""
    policy: LTPPolicy = model.policy  # type: ignore[assignment]
    ltp = policy.config()
    calib = calibration_batches(data, collate, config.batch_size, ltp.calibration_batches, seed=config.seed)
    history: dict = {}
    if ltp.target_flops is not None:
        history["initial_scale"], history["initial_ratio"] = calibrate_ltp(model, calib, ltp.target_flops)
    policy.stage = "soft"
    model.mode = "masked"
    model.train()

    def soft_loss(m: nn.Module, batch: dict[str, torch.Tensor], step: int):
        out = m(**batch)
        lengths = batch["attention_mask"].sum(1, keepdim=True).to(out.n_out.dtype)  # [B, 1]
        mean_mask = (out.n_out / lengths).mean(0)  # [L]
        if ltp.target_flops is None:
            reg = ltp.lambda_ * mean_mask.sum()
        else:
            reg = ltp.budget_weight * (out.flops_ratio - ltp.target_flops).abs()
        return out.loss + reg, {"ce": float(out.loss.detach()), "flops": float(out.flops_ratio.detach())}

    learned = policy.thresholds.learned
    learned.requires_grad_(True)
    groups = param_groups(model, config.lr, config.weight_decay, {id(learned)}, config.head_lr)
    groups.append({"params": [learned], "lr": ltp.threshold_lr, "weight_decay": 0.0})
    history["soft"] = train_steps(model, soft_loss, groups, data, collate, config, ltp.soft_steps, "ltp-soft",
                                  state_dir)
    policy.stage = "hard"
    if ltp.target_flops is not None:
        history["final_scale"], history["calibrated_ratio"] = calibrate_ltp(model, calib, ltp.target_flops)
    history["hard"] = finetune_under_pruning(model, data, collate, config, ltp.hard_steps, "ltp-hard", state_dir)
    history["thresholds"] = policy.thresholds().tolist()
    model.mode = "packed"
    model.eval()
    return history
