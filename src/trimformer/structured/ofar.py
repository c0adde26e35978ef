"""OFARPruning (once-for-all budgeted pruning considering input resolution; paper only, no public code), on
Torch-Pruning: one training of a CNN yields a family of physically smaller sub-networks, one per (FLOPs budget,
input resolution). See :class:`~trimformer.structured.ofar_config.OFARConfig` for the recipe.

Reading of the paper, where it leaves choices open:

- a pruning rate is a FLOPs budget (a fraction of the dense FLOPs at the largest resolution); a structure depends
  on the rate only (the channels kept), and one structure serves every resolution, as the weights are shared;
- the masks of the early search come from a channel criterion of the growing network (``l1`` by default), with
  each rate's widths bisected to its budget; their stability is the cosine similarity of the 0/1 mask vectors of
  successive checks, every rate at or above the threshold;
- joint training follows the sandwich rule of slimmable networks: every step trains the dense network (the
  largest) and ``subnets_per_step`` distinct (rate, resolution) pairs drawn uniformly without replacement, their
  gradients summed into one update; the dense network's predictions are the sub-networks' soft targets (in-place
  distillation, weighted by ``distill_weight``);
- each extracted sub-network has its batch norms recalibrated at its own resolution, since the shared running
  statistics mix every sub-network's.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from trimformer.structured.budget import WidthCost
from trimformer.structured.calibration import recalibrate_batchnorm_
from trimformer.structured.graph import ChannelGroup, channel_groups
from trimformer.structured.importance import channel_scores
from trimformer.structured.ofar_config import OFARConfig
from trimformer.structured.ofar_masks import Structures, mask_similarity, masked, rate_structures, resize
from trimformer.structured.record import StructuredResult, pruned_copy, structure_record
from trimformer.structured.train import Images, accuracy, calibration_inputs, check_images, sample_batches


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode within the context (tracing forwards leave batch-norm statistics alone)."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def search_masks(model: nn.Module, config: OFARConfig, groups: Sequence[ChannelGroup], cost: WidthCost,
                 example: torch.Tensor) -> tuple[Structures, dict[float, dict[str, int]]]:
    """Every rate's structure from ``config.criterion`` scores of ``model`` now, and its widths."""
    with _evaluating(model):
        scores = channel_scores(model, example, config.criterion, seed=config.seed)
    structures, budgets = rate_structures(groups, scores, cost, config.rates, config.allocation,
                                          config.min_channel_ratio, config.tolerance)
    return structures, {rate: b.widths for rate, b in budgets.items()}


def _sub_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor, distill_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(logits, labels)
    if distill_weight == 0:
        return loss
    kd = F.kl_div(logits.log_softmax(-1), soft, reduction="batchmean")  # KL(dense || sub-network)
    return (1 - distill_weight) * loss + distill_weight * kd


def train_step(model: nn.Module, groups: Sequence[ChannelGroup], structures: Structures | None, x: torch.Tensor,
               y: torch.Tensor, config: OFARConfig, pairs: Sequence[tuple[float, int]],
               gen: torch.Generator) -> float:
    """One step's gradients (accumulated; the caller steps the optimiser): the dense network at the largest
    resolution, then, when ``structures`` are given (joint training), ``subnets_per_step`` drawn (rate,
    resolution) sub-networks as masks. Returns the summed loss."""
    teacher = model(resize(x, config.largest))  # (B, classes)
    loss = F.cross_entropy(teacher, y)
    loss.backward()
    total = float(loss.detach())
    if structures is None:
        return total
    soft = teacher.detach().softmax(-1)
    for i in torch.randperm(len(pairs), generator=gen)[:config.subnets_per_step].tolist():
        rate, size = pairs[i]
        with masked(model, groups, structures[rate]):
            logits = model(resize(x, size))
        sub = _sub_loss(logits, y, soft, config.distill_weight)
        sub.backward()
        total += float(sub.detach())
    return total


@dataclass
class OFARResult(StructuredResult):
    """The OFAR family: ``model`` is the shared (dense) network, ``structures`` each rate's kept channels,
    ``report`` the search and training record. :meth:`subnet` extracts one (rate, resolution) sub-network;
    :func:`~trimformer.structured.ofar_store.save_ofar` saves the family as one checkpoint."""

    structures: Structures
    config: OFARConfig

    def rate_of(self, rate: float) -> float:
        """The listed rate equal to ``rate`` (ValueError naming the listed ones otherwise)."""
        for listed in self.structures:
            if math.isclose(listed, rate, rel_tol=1e-9):
                return listed
        raise ValueError(f"rate {rate!r} is not one this family was trained for; choose one of "
                         f"{sorted(self.structures)}")

    def masked(self, rate: float):
        """Context: the shared network computing the sub-network of ``rate`` (weights shared, nothing removed)."""
        with _evaluating(self.model):
            groups = channel_groups(self.model, torch.zeros(1, *self.input_shape[1:]))
        return masked(self.model, groups, self.structures[self.rate_of(rate)])

    @property
    def input_shape(self) -> list[int]:
        return list(self.report["input_shape"])

    def subnet(self, rate: float, resolution: int, data: Images, recalibrate: bool = True) -> nn.Module:
        """The sub-network of (``rate``, ``resolution``) as a physically smaller model (carrying its record, so that
        ``trimformer.save`` takes it), its batch norms recalibrated on ``calibration_batches`` batches of ``data``
        (images, labels) resized to ``resolution``. It expects inputs at ``resolution``
        (:func:`~trimformer.structured.ofar_masks.resize`). ``recalibrate=False`` keeps the shared running
        statistics (what the masked network computes; for checks, not for use)."""
        rate = self.rate_of(rate)
        if resolution not in self.config.resolutions:
            raise ValueError(f"resolution {resolution!r} is not one this family was trained for; choose one of "
                             f"{list(self.config.resolutions)}")
        data = check_images(data, "OFAR calibration data")
        example = resize(data[0][:1], resolution)
        recipe = {"method": "ofar", "config": self.config.to_dict(), "rate": rate, "resolution": resolution,
                  "recalibrated": recalibrate}
        small = pruned_copy(self.model.eval(), example, self.structures[rate], recipe)
        if not recalibrate:
            return small.eval()
        batches = calibration_inputs(data, self.config.calibration_batches, self.config.batch_size, self.config.seed)
        return recalibrate_batchnorm_(small, [resize(b, resolution) for b in batches])


def _check_model(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    if structure_record(model) is not None:
        raise ValueError("OFARPruning trains a dense model; this one is already structurally pruned")
    with _evaluating(model):
        groups = channel_groups(model, example)
    if not groups:
        raise ValueError("OFARPruning: the model has no prunable channel groups (Conv2d / Linear layers besides the "
                         "classifier)")
    return groups


def ofar_prune(model: nn.Module, config: OFARConfig, train: Images, val: Images | None = None,
               example_inputs: torch.Tensor | None = None, progress: bool = True) -> OFARResult:
    """OFARPruning of ``model`` (left unchanged; a trained or freshly initialised dense CNN) on ``train`` (images
    (N, C, H, W) at any size, resized to each resolution; labels (N,)): early structure search, then joint
    training of the sub-networks for the rest of ``config.steps``. ``val`` (same form, optional): each
    sub-network is extracted and its accuracy reported. ``example_inputs`` (default: one training image) fixes
    the input channels; the FLOPs are counted at the largest resolution."""
    if not isinstance(config, OFARConfig):
        raise TypeError(f"ofar_prune takes an OFARConfig, got {type(config).__name__}")
    x, y = check_images(train, "OFAR training data")
    example = resize((x if example_inputs is None else example_inputs)[:1], config.largest)
    groups = _check_model(model, example)
    work = copy.deepcopy(model)
    cost = WidthCost(work, example)
    pairs = [(rate, size) for rate in config.rates for size in config.resolutions]
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    opt = torch.optim.AdamW(work.parameters(), lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    structures: Structures | None = None
    frozen: Structures | None = None
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    seconds = {"search": 0.0, "train": 0.0}

    def check(step: int) -> None:
        nonlocal structures, frozen
        t0 = time.perf_counter()
        new, widths = search_masks(work, config, groups, cost, example)
        sims = None if structures is None else {r: mask_similarity(groups, structures[r], new[r]) for r in new}
        history.append({"step": step, "similarity": sims, "widths": widths})
        structures = new
        stable = sims is not None and all(v >= config.similarity_threshold for v in sims.values())
        if stable or step >= config.max_search_steps:
            frozen = new
            history[-1]["stopped"] = "stable" if stable else "max_search_steps"
        seconds["search"] += time.perf_counter() - t0

    work.train()
    bar = tqdm(sample_batches(len(x), config.batch_size, config.steps, config.seed), total=config.steps,
               desc="OFAR training", disable=not progress, leave=False)
    for step, idx in enumerate(bar):
        if frozen is None and (step % config.search_interval == 0 or step >= config.max_search_steps):
            check(step)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses.append(train_step(work, groups, frozen, x[idx], y[idx], config, pairs, gen))
        opt.step()
        sched.step()
        seconds["train"] += time.perf_counter() - t0
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    if frozen is None:  # the search ran to the end of training (or there was no training)
        check(config.max_search_steps)
    assert frozen is not None
    work.eval()
    report: dict[str, Any] = {
        "method": "ofar", "config": config.to_dict(), "input_shape": [1, *example.shape[1:]],
        "search": {"stopped_at": history[-1]["step"], "converged": history[-1].get("stopped") == "stable",
                   "checks": [{**h, "widths": {str(r): w for r, w in h["widths"].items()},
                               "similarity": None if h["similarity"] is None
                               else {str(r): s for r, s in h["similarity"].items()}} for h in history]},
        "losses": losses, "seconds": seconds,
    }
    result = OFARResult(work, report, frozen, config)
    report["subnets"] = subnet_costs(result, example)
    if val is not None:
        val = check_images(val, "OFAR validation data")
        report["val_accuracy"] = {f"{r:g}@{s}": accuracy(result.subnet(r, s, (x, y)), (resize(val[0], s), val[1]))
                                  for r, s in pairs}
    return result


def subnet_costs(result: OFARResult, example: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per "rate@resolution": MACs and their fraction of the dense model's at the largest resolution and at the
    sub-network's own, counted on the physically pruned copy (Torch-Pruning)."""
    out = {}
    costs = {size: WidthCost(result.model, resize(example, size)) for size in result.config.resolutions}
    largest = costs[result.config.largest].dense
    for rate, structure in result.structures.items():
        widths = {name: len(kept) for name, kept in structure.items()}
        for size, cost in costs.items():
            macs = cost(widths)
            out[f"{rate:g}@{size}"] = {"rate": rate, "resolution": size, "widths": widths, "macs": macs,
                                       "flops_fraction": macs / largest, "flops_fraction_same_resolution":
                                       macs / cost.dense}
    return out
