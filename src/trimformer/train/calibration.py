"""Calibration to a FLOPs target: one bisection over one scalar knob of a pruning policy.

LTP (its threshold scale), top-k (its final keep rate) and AS-ViT (one threshold for every stage) all reach a
FLOPs target the same way: measure the pruned / dense FLOPs ratio with hard masks on a fixed sample of
batches, and bisect the knob. Where the knob has no natural upper end, the upper end is doubled first until the
target is reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from trimformer.pruned import TokenPrunedModel


@torch.no_grad()
def flops_ratio_on(model: TokenPrunedModel, batches: list[dict[str, torch.Tensor]]) -> float:
    """Pruned / dense FLOPs over ``batches`` (hard masks; packed execution, the fastest)."""
    was_training = model.training
    model.eval()
    flops = dense = 0.0
    with model.options(mode="packed"):
        for batch in batches:
            out = model(**batch)
            flops += float(out.flops.sum())
            dense += float(out.dense_flops.sum())
    model.train(was_training)
    return flops / dense


def bisect_knob(set_knob: Callable[[float], None], measure: Callable[[], float], target: float,
                low: float, high: float, decreasing: bool, iterations: int = 14,
                tolerance: float = 0.003) -> tuple[float, float]:
    """The knob value whose measured ratio is closest to ``target``, by bisection on [low, high].

    ``decreasing``: the ratio falls as the knob grows (thresholds); else it rises (keep rate). Leaves the knob
    at the best value and returns (knob, achieved ratio).
    """
    best = (low, math.inf, 1.0)
    for _ in tqdm(range(iterations), desc=f"calibrate to {target:.2f} FLOPs", leave=False):
        mid = 0.5 * (low + high)
        set_knob(mid)
        ratio = measure()
        if abs(ratio - target) < best[1]:
            best = (mid, abs(ratio - target), ratio)
        if abs(ratio - target) <= tolerance:
            break
        too_costly = ratio > target
        if too_costly == decreasing:
            low = mid
        else:
            high = mid
    set_knob(best[0])
    return best[0], best[2]


def calibrate_knob(model: TokenPrunedModel, batches: list[dict[str, torch.Tensor]], target: float,
                   set_knob: Callable[[float], None], *, decreasing: bool, high: float = 1.0,
                   grow_limit: float | None = None, iterations: int = 14) -> tuple[float, float]:
    """Set a policy knob so that ``model`` reaches ``target`` FLOPs on ``batches`` -> (knob, achieved ratio).

    With ``grow_limit``, the upper end starts at ``high`` and doubles (up to ``grow_limit``) until the ratio
    there is at or below the target; the search is then on [0, high].
    """
    def measure() -> float:
        return flops_ratio_on(model, batches)

    if grow_limit is not None:
        set_knob(high)
        while measure() > target and high < grow_limit:
            high *= 2
            set_knob(high)
    return bisect_knob(set_knob, measure, target, 0.0, high, decreasing=decreasing, iterations=iterations)
