"""``OFARConfig``: the recipe of OFARPruning (once-for-all budgeted pruning over FLOPs budgets and input
resolutions), a dataclass that round-trips through JSON and is recorded in the family checkpoint and in every
sub-network extracted from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trimformer.config import JsonConfig, check_numbers
from trimformer.structured.budget import check_target
from trimformer.structured.importance import check_criterion

ALLOCATIONS = ("global", "uniform")


@dataclass
class OFARConfig(JsonConfig):
    """OFARPruning (once-for-all budgeted pruning considering input resolution; paper only, no public code).

    One training of the dense network yields a family of sub-networks, one per (rate, resolution):

    - ``rates``: the FLOPs budgets, each a fraction of the dense model's FLOPs at the largest resolution (the
      sub-network of rate r keeps the channels that give r x dense FLOPs within ``tolerance``);
    - ``resolutions``: input sizes in pixels (square); inputs are resized (bilinear, antialiased) to each; the
      dense network trains at the largest;
    - early structure search: every ``search_interval`` steps of the first (at most ``max_search_steps``)
      training steps, each rate's channel masks are recomputed from the ``criterion`` scores; the search stops at
      the first check where the cosine similarity of every rate's mask with its previous one reaches
      ``similarity_threshold``, and the masks are then frozen;
    - widths per rate: ``allocation`` "global" (one threshold over all channels' scores, each divided by its
      group's mean, at least ``min_channel_ratio`` of a group kept) or "uniform" (one width ratio for every group),
      bisected to the budget;
    - joint training for the rest of ``steps``: each step trains the dense network, the smallest rate, and
      ``subnets_per_step`` - 1 more randomly drawn (rate, resolution) pairs (the sandwich rule), the sub-networks as
      channel masks on the shared weights; a sub-network's loss is (1 - ``distill_weight``) x cross-entropy +
      ``distill_weight`` x KL to the dense network's predictions (in-place distillation);
    - extraction: a sub-network is physically pruned from the shared weights and its batch norms recalibrated on
      ``calibration_batches`` batches at its resolution.

    Training: AdamW at ``lr`` (no weight decay), one cosine schedule over ``steps``, ``batch_size``, ``seed``.
    """

    structured_method: ClassVar[str] = "ofar"  # the name in recipes; marks a structured config

    rates: tuple[float, ...] = (0.75, 0.5, 0.35, 0.25)
    resolutions: tuple[int, ...] = (28, 20)
    criterion: str = "l1"
    allocation: str = "global"
    steps: int = 600
    search_interval: int = 25
    max_search_steps: int = 200
    similarity_threshold: float = 0.98
    subnets_per_step: int = 2
    distill_weight: float = 0.5
    lr: float = 4e-3
    batch_size: int = 64
    calibration_batches: int = 8
    min_channel_ratio: float = 0.1
    tolerance: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        self.rates = tuple(self.rates)
        self.resolutions = tuple(self.resolutions)
        check_numbers(self, counts=("steps", "max_search_steps", "seed"),
                      positive_counts=("search_interval", "subnets_per_step", "batch_size", "calibration_batches"))
        if not self.rates:
            raise ValueError("OFARConfig.rates must list at least one FLOPs budget, e.g. rates=(0.75, 0.5)")
        for rate in self.rates:
            check_target(rate, "OFARConfig.rates")
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"OFARConfig.rates repeats a budget: {self.rates}")
        if not self.resolutions:
            raise ValueError("OFARConfig.resolutions must list at least one input size in pixels, e.g. (28, 20)")
        for size in self.resolutions:
            if isinstance(size, bool) or not isinstance(size, int) or size < 4:
                raise ValueError(f"OFARConfig.resolutions are input sizes in pixels (integers >= 4), got {size!r}")
        if len(set(self.resolutions)) != len(self.resolutions):
            raise ValueError(f"OFARConfig.resolutions repeats a size: {self.resolutions}")
        check_criterion(self.criterion)
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"OFARConfig.allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.max_search_steps > self.steps:
            raise ValueError(f"OFARConfig.max_search_steps ({self.max_search_steps}) cannot exceed steps "
                             f"({self.steps}): the search happens during training")
        if not 0.0 < self.similarity_threshold <= 1.0:
            raise ValueError("OFARConfig.similarity_threshold is a cosine similarity in (0, 1], got "
                             f"{self.similarity_threshold}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"OFARConfig.distill_weight must be in [0, 1], got {self.distill_weight}")
        if not 0.0 < self.min_channel_ratio <= 1.0:
            raise ValueError(f"OFARConfig.min_channel_ratio must be in (0, 1], got {self.min_channel_ratio}")
        if not 0.0 < self.tolerance < 0.5:
            raise ValueError(f"OFARConfig.tolerance is a relative FLOPs error in (0, 0.5), got {self.tolerance}")
        if not self.lr > 0:
            raise ValueError(f"OFARConfig.lr must be > 0, got {self.lr}")

    @property
    def largest(self) -> int:
        """The resolution the dense network trains at and the budgets are counted at."""
        return max(self.resolutions)
