"""Baselines for structured pruning, in the same harness and at the same FLOPs as AdaPruner:

- :func:`magnitude_uniform`: Torch-Pruning's magnitude (group L1) ranking with one width ratio for every group;
- :func:`network_slimming`: Liu et al. 2017: one global threshold on the batch-norm scales of a sparse-trained
  model (the channels above it stay; at least one per group);
- :func:`from_scratch`: a sub-network's architecture re-initialised and trained from scratch.

Each budgeted baseline bisects its own factor (the ratio; the fraction of channels kept globally) to the FLOPs
target with :func:`~trimformer.structured.budget.search_budget`, recalibrates the batch norms on a few batches
and fine-tunes like AdaPruner, so that the criterion and the widths are the only differences.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trimformer.structured.budget import WidthCost, search_budget, uniform_widths
from trimformer.structured.calibration import recalibrate_batchnorm_
from trimformer.structured.graph import channel_groups
from trimformer.structured.importance import channel_scores, keep_top
from trimformer.structured.record import RECORD_ATTR, StructuredResult, pruned_copy
from trimformer.structured.train import Images, calibration_inputs, check_images, train_steps


def _finish(model: nn.Module, widths: dict[str, int], scores: dict[str, torch.Tensor], example: torch.Tensor,
            train: Images, recipe: dict, steps: int, lr: float, batch_size: int, seed: int, calibration_batches: int,
            progress: bool) -> nn.Module:
    small = pruned_copy(model, example, keep_top(scores, widths), recipe)
    recalibrate_batchnorm_(small, calibration_inputs(train, calibration_batches, batch_size, seed))
    train_steps(small, train, steps, lr, batch_size, seed, desc=f"{recipe['method']} fine-tuning", progress=progress)
    return small


def magnitude_uniform(model: nn.Module, target_flops: float, train: Images, finetune_steps: int, lr: float = 1e-3,
                      batch_size: int = 64, seed: int = 0, calibration_batches: int = 8, tolerance: float = 0.01,
                      example_inputs: torch.Tensor | None = None, progress: bool = True) -> StructuredResult:
    """Uniform width ratio (bisected to ``target_flops``), channels ranked by Torch-Pruning's group L1 norm."""
    train = check_images(train, "training data")
    example = train[0][:1] if example_inputs is None else example_inputs
    groups = channel_groups(model, example)
    cost = WidthCost(model, example)
    budget = search_budget(lambda r: uniform_widths(groups, r), cost, target_flops, 0.0, 1.0,
                           maximum={g.name: g.channels for g in groups}, fill_order=[g.name for g in groups],
                           tolerance=tolerance)
    recipe = {"method": "magnitude_uniform", "target_flops": target_flops, "ratio": budget.factor}
    small = _finish(model, budget.widths, channel_scores(model, example, "l1"), example, train, recipe,
                    finetune_steps, lr, batch_size, seed, calibration_batches, progress)
    return StructuredResult(small, {**recipe, "widths": budget.widths, "macs": budget.macs,
                                    "dense_macs": budget.dense_macs, "flops_fraction": budget.fraction})


def network_slimming(sparse_model: nn.Module, target_flops: float, train: Images, finetune_steps: int,
                     lr: float = 1e-3, batch_size: int = 64, seed: int = 0, calibration_batches: int = 8,
                     tolerance: float = 0.01, example_inputs: torch.Tensor | None = None,
                     progress: bool = True) -> StructuredResult:
    """One global threshold on the batch-norm scales of ``sparse_model`` (already trained with the L1 penalty),
    lowered until the sub-network fills ``target_flops``; the channels above it stay."""
    train = check_images(train, "training data")
    example = train[0][:1] if example_inputs is None else example_inputs
    groups = channel_groups(sparse_model, example)
    scores = channel_scores(sparse_model, example, "bn_scale")
    ranked = torch.cat([scores[g.name] for g in groups]).sort(descending=True).values  # all channels' |gamma|

    def widths_at(fraction: float) -> dict[str, int]:
        threshold = ranked[max(0, min(len(ranked), round(fraction * len(ranked))) - 1)]
        return {g.name: max(1, int((scores[g.name] >= threshold).sum())) for g in groups}

    order = sorted((g.name for g in groups), key=lambda n: -float(scores[n].max()))
    budget = search_budget(widths_at, WidthCost(sparse_model, example), target_flops, 0.0, 1.0,
                           maximum={g.name: g.channels for g in groups}, fill_order=order, tolerance=tolerance)
    recipe = {"method": "network_slimming", "target_flops": target_flops, "kept_fraction": budget.factor}
    small = _finish(sparse_model, budget.widths, scores, example, train, recipe, finetune_steps, lr, batch_size,
                    seed, calibration_batches, progress)
    return StructuredResult(small, {**recipe, "widths": budget.widths, "macs": budget.macs,
                                    "dense_macs": budget.dense_macs, "flops_fraction": budget.fraction})


def from_scratch(pruned: nn.Module, train: Images, steps: int, lr: float = 4e-3, batch_size: int = 64,
                 seed: int = 0, progress: bool = True) -> StructuredResult:
    """``pruned``'s architecture (same widths, same FLOPs) with fresh weights (each layer's ``reset_parameters``,
    convolutions Kaiming-normal as the zoo initialises them), trained from scratch for ``steps`` steps."""
    train = check_images(train, "training data")
    small = copy.deepcopy(pruned)
    torch.manual_seed(seed)
    for m in small.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    record = getattr(small, RECORD_ATTR, None)
    if record is not None:
        record["recipe"] = {"method": "from_scratch", "structure_of": record["recipe"].get("method")}
    losses = train_steps(small, train, steps, lr, batch_size, seed, desc="from-scratch training", progress=progress)
    return StructuredResult(small, {"method": "from_scratch", "steps": steps, "final_loss": losses[-1] if losses
                                    else None})
