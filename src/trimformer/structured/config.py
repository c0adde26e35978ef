"""Configs of the structured (channel) pruning methods: dataclasses that round-trip through JSON, recorded in
every saved pruned model (``recipe``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trimformer.config import JsonConfig, check_numbers
from trimformer.structured.budget import check_target
from trimformer.structured.importance import check_criterion


@dataclass
class AdaPrunerConfig(JsonConfig):
    """AdaPruner (Liu et al., 2021): sparse training, importance-scaled widths under a FLOPs budget, an adaptively
    chosen weight-inheritance criterion, fine-tuning.

    1. ``sparse_steps`` steps of training with ``l1_penalty`` x sum |gamma| over the batch norms;
    2. each channel group's importance = the mean |gamma| of its batch norms; group g keeps
       clamp(factor x importance_g / mean importance, ``min_channel_ratio``, 1) of its channels, the global
       factor bisected so that the sub-network's MACs are ``target_flops`` x dense within ``tolerance``;
    3. for each criterion in ``criteria`` the sub-network inherits the channels that criterion ranks highest, its
       batch norms are recalibrated on ``calibration_batches`` batches, and its accuracy is measured on
       ``selection_images`` held-out images; the most accurate is kept;
    4. ``finetune_steps`` steps of fine-tuning.

    Training: AdamW at ``lr`` (no weight decay), cosine schedule, ``batch_size`` images per step, ``seed``.
    """

    structured_method: ClassVar[str] = "adapruner"  # the name in recipes; marks a structured config

    target_flops: float = 0.6
    l1_penalty: float = 1e-4
    sparse_steps: int = 200
    criteria: tuple[str, ...] = ("l1", "bn_scale", "random")
    calibration_batches: int = 8
    selection_images: int = 1000
    finetune_steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    min_channel_ratio: float = 0.1
    tolerance: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        self.criteria = tuple(self.criteria)
        check_numbers(self, counts=("sparse_steps", "finetune_steps", "seed"),
                      positive_counts=("calibration_batches", "selection_images", "batch_size"),
                      nonnegative=("l1_penalty",))
        check_target(self.target_flops)
        if not self.criteria:
            raise ValueError("AdaPrunerConfig.criteria must name at least one criterion (l1, bn_scale, random)")
        for name in self.criteria:
            check_criterion(name)
        if len(set(self.criteria)) != len(self.criteria):
            raise ValueError(f"AdaPrunerConfig.criteria repeats a criterion: {self.criteria}")
        if not 0.0 < self.min_channel_ratio <= 1.0:
            raise ValueError(f"AdaPrunerConfig.min_channel_ratio must be in (0, 1], got {self.min_channel_ratio}")
        if not 0.0 < self.tolerance < 0.5:
            raise ValueError(f"AdaPrunerConfig.tolerance is a relative FLOPs error in (0, 0.5), got {self.tolerance}")
        if not self.lr > 0:
            raise ValueError(f"AdaPrunerConfig.lr must be > 0, got {self.lr}")
