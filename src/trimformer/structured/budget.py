"""MAC budgets: counting with Torch-Pruning, and the search of a global factor whose sub-network meets a budget.

A sub-network is described by its group widths (group name -> channels kept). Its MACs are counted exactly on a
copy of the model pruned to those widths (``tp.utils.count_ops_and_params`` at batch 1); counts are cached per
width vector. :func:`search_budget` bisects a scalar factor that widens every group monotonically (AdaPruner's
importance-scaled widths, a uniform ratio, a global slimming threshold) to the widest sub-network within the
budget, then adds single channels in a given priority order while the budget holds, so that the budget is met to
within ``tolerance`` even where one channel of a wide group costs several percent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from trimformer.structured.graph import ChannelGroup, first_channels, prune_channels_

Widths = dict[str, int]


class BudgetError(ValueError):
    """A FLOPs budget that no sub-network of the search meets."""


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of ``model`` at ``example_inputs`` (batch 1), counted by Torch-Pruning."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


class WidthCost:
    """MACs of ``model``'s sub-network at given group widths (a pruned copy, counted by Torch-Pruning; cached)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence[str] | None = None):
        self.model, self.example_inputs, self.ignored = model, example_inputs, ignored
        self.dense = count_macs(model, example_inputs)[0]
        self._cache: dict[tuple[tuple[str, int], ...], int] = {}

    def __call__(self, widths: Mapping[str, int]) -> int:
        key = tuple(sorted(widths.items()))
        if key not in self._cache:
            small = copy.deepcopy(self.model)
            prune_channels_(small, self.example_inputs, first_channels(widths), self.ignored)
            self._cache[key] = count_macs(small, self.example_inputs)[0]
        return self._cache[key]

    def fraction(self, widths: Mapping[str, int]) -> float:
        """MACs at ``widths`` as a fraction of the dense model's."""
        return self(widths) / self.dense


@dataclass(frozen=True)
class BudgetResult:
    """The sub-network found: its group ``widths``, the ``factor`` bisection stopped at, and its MACs."""

    widths: Widths
    factor: float
    macs: int
    dense_macs: int

    @property
    def fraction(self) -> float:
        return self.macs / self.dense_macs


def check_target(target: float, name: str = "target_flops") -> None:
    """A FLOPs fraction must lie in (0, 1]."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise ValueError(f"{name} is a fraction of the dense model's FLOPs in (0, 1], got {target!r}")


def search_budget(widths_at: Callable[[float], Widths], cost: WidthCost, target: float, low: float, high: float,
                  maximum: Mapping[str, int], fill_order: Sequence[str] = (), tolerance: float = 0.01,
                  iterations: int = 40) -> BudgetResult:
    """The widest sub-network ``widths_at(factor)`` (non-decreasing in ``factor`` on [low, high]) whose MACs stay
    within ``target`` x dense, then widened one channel at a time in ``fill_order`` (cycled) while the budget
    holds. BudgetError when even ``widths_at(low)`` exceeds the budget, or when the result misses it by more
    than ``tolerance`` (relative)."""
    check_target(target)
    budget = target * cost.dense
    smallest = widths_at(low)
    if cost(smallest) > budget * (1 + tolerance):
        raise BudgetError(f"a FLOPs budget of {target:.1%} is unreachable: the smallest sub-network this search "
                          f"allows has {cost.fraction(smallest):.1%} of the dense FLOPs (layers that are not pruned "
                          "and the minimum width per group set that floor)")
    if cost(widths_at(high)) <= budget:
        low = high
    else:
        for _ in range(iterations):  # invariant: cost(widths_at(low)) <= budget < cost(widths_at(high))
            mid = 0.5 * (low + high)
            if cost(widths_at(mid)) <= budget:
                low = mid
            else:
                high = mid
    widths = widths_at(low)
    if cost(widths) > budget:  # only when widths_at(low) itself was over budget (within tolerance)
        return _checked(BudgetResult(widths, low, cost(widths), cost.dense), target, tolerance)
    widths = _fill(widths, cost, budget, maximum, fill_order, tolerance)
    return _checked(BudgetResult(widths, low, cost(widths), cost.dense), target, tolerance)


def _fill(widths: Widths, cost: WidthCost, budget: float, maximum: Mapping[str, int], order: Sequence[str],
          tolerance: float) -> Widths:
    """Add one channel at a time to the groups in ``order`` (cycled) while the MACs stay within ``budget``; then,
    while still short of it by more than ``tolerance``, move one channel between two groups (the move that comes
    closest to the budget without exceeding it), since one channel of a wide layer can cost several percent."""
    widths = dict(widths)
    close = budget * (1 - tolerance / 2)
    grown = True
    while grown and cost(widths) < close:
        grown = False
        for name in order:
            if widths[name] < maximum[name] and cost({**widths, name: widths[name] + 1}) <= budget:
                widths, grown = {**widths, name: widths[name] + 1}, True
                if cost(widths) >= close:
                    break
    while cost(widths) < close:
        moves = [{**widths, a: widths[a] + 1, b: widths[b] - 1} for a in order for b in order
                 if a != b and widths[a] < maximum[a] and widths[b] > 1]
        fitting = [m for m in moves if cost(widths) < cost(m) <= budget]
        if not fitting:
            break
        widths = max(fitting, key=cost)
    return widths


def _checked(result: BudgetResult, target: float, tolerance: float) -> BudgetResult:
    if abs(result.fraction / target - 1) > tolerance:
        raise BudgetError(f"no sub-network of whole channels found within {tolerance:.0%} of the {target:.1%} FLOPs "
                          f"budget: the closest has {result.fraction:.2%}. Choose another target_flops")
    return result


def uniform_widths(groups: Sequence[ChannelGroup], ratio: float, min_ratio: float = 0.0) -> Widths:
    """Every group keeps round(max(ratio, min_ratio) x width) channels (at least one)."""
    ratio = min(1.0, max(ratio, min_ratio))
    return {g.name: min(g.channels, max(1, round(ratio * g.channels))) for g in groups}


def scaled_widths(groups: Sequence[ChannelGroup], importance: Mapping[str, float], factor: float,
                  min_ratio: float) -> Widths:
    """AdaPruner's widths: group g keeps clamp(factor x importance_g / mean importance, min_ratio, 1) of its
    channels (rounded, at least one); non-decreasing in ``factor``."""
    mean = sum(importance[g.name] for g in groups) / len(groups)
    widths = {}
    for g in groups:
        ratio = min(1.0, max(min_ratio, factor * importance[g.name] / mean))
        widths[g.name] = min(g.channels, max(1, round(ratio * g.channels)))
    return widths


def full_factor(groups: Sequence[ChannelGroup], importance: Mapping[str, float]) -> float:
    """The smallest factor at which :func:`scaled_widths` keeps every channel."""
    mean = sum(importance[g.name] for g in groups) / len(groups)
    return max(mean / max(importance[g.name], 1e-12 * mean) for g in groups)
