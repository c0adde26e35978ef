"""AdaPruner (Liu et al., "AdaPruner: Adaptive Channel Pruning and Effective Weights Inheritance", 2021; paper
only, no public code), on Torch-Pruning. The four steps are :func:`sparse_train_`, :func:`choose_widths`,
:func:`inherit` and the fine-tuning in :func:`adaprune`; see :class:`~trimformer.structured.config.AdaPrunerConfig`.

Reading of the paper, where it leaves choices open: a "block" is a Torch-Pruning channel group (the channels
whose width is chosen together: a ResNet stage's residual width, a block's inner width, a MobileNetV2 block's
expanded width); its importance is the mean |gamma| over all its batch norms; widths are importance / mean
importance x a global factor, clamped to [min_channel_ratio, 1], the factor bisected to the FLOPs budget.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from trimformer.structured.budget import BudgetResult, WidthCost, full_factor, scaled_widths, search_budget
from trimformer.structured.calibration import recalibrate_batchnorm_
from trimformer.structured.config import AdaPrunerConfig
from trimformer.structured.graph import ChannelGroup, channel_groups
from trimformer.structured.importance import channel_scores, keep_top
from trimformer.structured.record import StructuredResult, pruned_copy, structure_record
from trimformer.structured.train import Images, accuracy, calibration_inputs, check_images, train_steps


def require_batchnorms(groups: Sequence[ChannelGroup], method: str) -> None:
    """ValueError when a channel group has no batch norm (its importance would be undefined)."""
    if not groups:
        raise ValueError(f"{method}: the model has no prunable channel groups (Conv2d / Linear layers besides the "
                         "classifier)")
    bare = [g.name for g in groups if not g.batchnorms]
    if bare:
        raise ValueError(f"{method} reads batch-norm scales, but channel group(s) {bare[:5]} have no batch norm: "
                         "use a model with a BatchNorm after every convolution (or another method)")


def sparse_train_(model: nn.Module, config: AdaPrunerConfig, train: Images, progress: bool = True) -> list[float]:
    """Step 1, in place: ``sparse_steps`` steps with the L1 penalty on batch-norm scales; returns the losses."""
    return train_steps(model, train, config.sparse_steps, config.lr, config.batch_size, config.seed,
                       l1_penalty=config.l1_penalty, desc="AdaPruner sparse training", progress=progress)


def group_importance(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, float]:
    """Step 2a: each channel group's importance, the mean |gamma| of its batch norms' channels."""
    return {name: float(s.mean()) for name, s in channel_scores(model, example_inputs, "bn_scale").items()}


def choose_widths(model: nn.Module, config: AdaPrunerConfig, example_inputs: torch.Tensor,
                  cost: WidthCost | None = None) -> tuple[BudgetResult, dict[str, float]]:
    """Step 2: the group widths (importance-scaled, factor bisected to ``target_flops``) and the importances."""
    groups = channel_groups(model, example_inputs)
    require_batchnorms(groups, "AdaPruner")
    importance = group_importance(model, example_inputs)
    cost = cost or WidthCost(model, example_inputs)
    order = sorted(importance, key=lambda n: -importance[n])  # extra channels go to the most important first
    result = search_budget(lambda f: scaled_widths(groups, importance, f, config.min_channel_ratio), cost,
                           config.target_flops, 0.0, full_factor(groups, importance),
                           maximum={g.name: g.channels for g in groups}, fill_order=order,
                           tolerance=config.tolerance)
    return result, importance


def inherit(model: nn.Module, config: AdaPrunerConfig, widths: dict[str, int], train: Images, select: Images,
            example_inputs: torch.Tensor, recipe: dict) -> tuple[nn.Module, str, dict[str, float]]:
    """Step 3: the sub-network at ``widths`` inherits its channels by each criterion in turn; each candidate's
    batch norms are recalibrated on ``calibration_batches`` training batches and its accuracy measured on
    ``select``; returns (the most accurate candidate, its criterion, every criterion's accuracy)."""
    calib = calibration_inputs(train, config.calibration_batches, config.batch_size, config.seed)
    best, best_name, scores = None, "", {}
    for name in config.criteria:
        kept = keep_top(channel_scores(model, example_inputs, name, seed=config.seed), widths)
        candidate = recalibrate_batchnorm_(pruned_copy(model, example_inputs, kept, recipe), calib)
        scores[name] = accuracy(candidate, select)
        if best is None or scores[name] > scores[best_name]:
            best, best_name = candidate, name
    assert best is not None  # config.criteria is never empty
    return best, best_name, scores


def adaprune(model: nn.Module, config: AdaPrunerConfig, train: Images, val: Images | None = None,
             example_inputs: torch.Tensor | None = None, progress: bool = True,
             sparse_trained: bool = False) -> StructuredResult:
    """AdaPruner on ``model`` (left unchanged): sparse training, widths under the budget, adaptive inheritance,
    fine-tuning, on ``train`` (images, labels). The criterion is chosen on the first ``selection_images`` of
    ``val`` (default: of ``train``). ``example_inputs`` (default: one training image) fixes the input shape the
    FLOPs are counted at. ``sparse_trained``: ``model`` already went through :func:`sparse_train_` (step 1 is
    skipped; one sparse model serves several budgets)."""
    if structure_record(model) is not None:
        raise ValueError("AdaPruner prunes a dense model; this one is already structurally pruned")
    train = check_images(train, "AdaPruner training data")
    select = check_images(val, "AdaPruner validation data") if val is not None else train
    select = (select[0][:config.selection_images], select[1][:config.selection_images])
    example = train[0][:1] if example_inputs is None else example_inputs
    require_batchnorms(channel_groups(model, example), "AdaPruner")
    work = copy.deepcopy(model)
    sparse_losses = [] if sparse_trained else sparse_train_(work, config, train, progress)
    budget, importance = choose_widths(work, config, example)
    recipe = {"method": "adapruner", "config": config.to_dict()}
    small, criterion, scores = inherit(work, config, budget.widths, train, select, example, recipe)
    small.trimformer_structure["recipe"]["criterion"] = criterion
    finetune_losses = train_steps(small, train, config.finetune_steps, config.lr, config.batch_size, config.seed,
                                  desc="AdaPruner fine-tuning", progress=progress)
    report = {"method": "adapruner", "config": config.to_dict(), "widths": budget.widths, "factor": budget.factor,
              "macs": budget.macs, "dense_macs": budget.dense_macs, "flops_fraction": budget.fraction,
              "group_importance": importance, "criterion": criterion, "criterion_accuracy": scores,
              "sparse_losses": sparse_losses, "finetune_losses": finetune_losses}
    return StructuredResult(small.eval(), report)
