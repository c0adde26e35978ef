"""Shared pieces of the vision pruning methods (SaiT, AS-ViT): stage placement and score capture.

Pruning *stages* are the blocks whose attention decides which tokens survive. Papers give them for a
12-block model (DeiT-S); :func:`stage_blocks` moves them to other depths.

:class:`Capture` records, for one forward, what each stage saw and decided (scores with their gradient,
live tokens, keep masks). Training losses that need more than the logits (SaiT's token-selection
distillation, AS-ViT's differentiable FLOPs) open one explicitly around a forward with
``with policy.capture() as cap: out = model(...)``; outside such a block nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from trimformer.engine.policy import PruningPolicy

REFERENCE_DEPTH = 12


def scale_blocks(blocks: Sequence[int], num_layers: int, reference_depth: int = REFERENCE_DEPTH) -> tuple[int, ...]:
    """0-indexed blocks of a ``reference_depth``-block model moved to a ``num_layers``-block one.

    Rounded half up, clamped to the last block, duplicates removed: (4, 7, 10) of 12 -> (2, 4, 5) of 6.
    """
    scaled = {min(num_layers - 1, int(b * num_layers / reference_depth + 0.5)) for b in blocks}
    return tuple(sorted(scaled))


def stage_blocks(stages: Sequence[int] | None, default: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The configured stages (validated against the depth) or ``default`` (given for 12 blocks) scaled."""
    if stages is None:
        return scale_blocks(default, num_layers)
    bad = [s for s in stages if not 0 <= s < num_layers]
    if bad:
        raise ValueError(f"pruning stages {bad} are outside the model's blocks 0..{num_layers - 1}")
    return tuple(stages)


def check_stage_list(stages: Sequence[int] | None, name: str = "stages") -> tuple[int, ...] | None:
    """Validate a configured stage list (JSON gives lists: stored as a tuple so configs compare equal)."""
    if stages is None:
        return None
    stages = tuple(stages)
    if not stages:
        raise ValueError(f"{name} must name at least one block (or be None for the default)")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in stages):
        raise ValueError(f"{name} are 0-indexed block numbers (ints >= 0), got {list(stages)}")
    if list(stages) != sorted(set(stages)):
        raise ValueError(f"{name} must be strictly increasing, got {list(stages)}")
    return stages


@dataclass
class StageRecord:
    """What one block saw (and decided) in a captured forward."""

    layer: int
    scores: torch.Tensor  # [B, N] importance, with its gradient
    alive: torch.Tensor  # bool [B, N] live tokens entering the block
    keep: torch.Tensor | None = None  # bool [B, N] hard decision (None: observed only, nothing pruned)
    soft: torch.Tensor | None = None  # [B, N] soft keep probability (AS-ViT in training)


@dataclass
class Capture:
    """Records of one forward, in block order."""

    records: list[StageRecord] = field(default_factory=list)

    def at(self, layer: int) -> StageRecord:
        """The record of ``layer`` (KeyError if that block recorded nothing)."""
        for record in self.records:
            if record.layer == layer:
                return record
        raise KeyError(f"no record for block {layer}; recorded: {[r.layer for r in self.records]}")

    def pruned(self) -> list[StageRecord]:
        """Records of the blocks that took a decision."""
        return [r for r in self.records if r.keep is not None]


class CapturingPolicy(PruningPolicy):
    """A policy whose deciders can record into a :class:`Capture` opened by the caller."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(num_layers)
        self._capture: Capture | None = None

    @contextmanager
    def capture(self) -> Iterator[Capture]:
        """Record the stages of the forwards run inside the block (not nestable)."""
        if self._capture is not None:
            raise RuntimeError("a capture is already open on this policy")
        self._capture = Capture()
        try:
            yield self._capture
        finally:
            self._capture = None

    @property
    def capturing(self) -> bool:
        return self._capture is not None

    @property
    def records_whole_batch(self) -> bool:
        return self.capturing

    def _record(self, record: StageRecord) -> None:
        if self._capture is not None:
            self._capture.records.append(record)


def policy_of(model, kind: type):
    """``model.policy`` if it is a ``kind`` policy; otherwise a ValueError saying how to build one."""
    if not isinstance(model.policy, kind):
        raise ValueError(f"model's policy is {type(model.policy).__name__}, expected {kind.__name__}: "
                         "build it with trimformer.prune(model, config)")
    return model.policy
