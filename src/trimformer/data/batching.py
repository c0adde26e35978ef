"""The batching rules every task shares: one seeded epoch order, one calibration sample, fixed batches.

Data is any map-style dataset of (input, label) items (``TextDataset`` gives (text, label), image datasets
(pixels [3, H, W], label)); a ``collate`` turns a list of items into a batch dict (``text_collate(tokenizer,
max_length)`` or ``image_collate``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

Collate = Callable[[list[Any]], dict[str, torch.Tensor]]


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The order of epoch ``epoch``: a shuffle fixed by (seed, epoch), the same in every process and on resume."""
    order = list(range(num_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def epoch_loader(data: Sequence, collate: Collate, batch_size: int, seed: int, epoch: int) -> DataLoader:
    """One epoch of ``data`` in :func:`epoch_order`; the last partial batch is dropped."""
    order = epoch_order(len(data), seed, epoch)
    return DataLoader(Subset(data, order), batch_size=batch_size, shuffle=False, collate_fn=collate,
                      drop_last=True)


def fixed_batches(data: Sequence, collate: Collate, batch_size: int, labels: bool = False,
                  indices: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
    """``data`` (or its ``indices``) in order as collated batches; without ``labels`` (timing, calibration)."""
    order = list(range(len(data))) if indices is None else list(indices)
    batches = [collate([data[i] for i in order[start:start + batch_size]])
               for start in range(0, len(order), batch_size)]
    if not labels:
        for batch in batches:
            batch.pop("labels", None)
    return batches


def calibration_batches(data: Sequence, collate: Collate, batch_size: int, num_batches: int,
                        seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A fixed, seeded sample of ``num_batches`` unlabelled batches (FLOPs and activation calibration)."""
    order = list(range(len(data)))
    random.Random(seed + 17).shuffle(order)
    return fixed_batches(data, collate, batch_size, indices=order[:batch_size * num_batches])


def sample_indices(num_examples: int, count: int, seed: int = 0) -> list[int]:
    """A seeded random sample of ``count`` example indices in increasing order (all of them when ``count`` is
    at least ``num_examples``): the evaluation and timing subsets."""
    if count >= num_examples:
        return list(range(num_examples))
    return sorted(random.Random(seed).sample(range(num_examples), count))
