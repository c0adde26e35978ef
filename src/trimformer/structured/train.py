"""The short training loops of structured pruning (sparse training, fine-tuning, training from scratch) and
top-1 accuracy, on in-memory image tensors (x: (N, C, H, W) normalised, y: (N,) int64)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

Images = tuple[torch.Tensor, torch.Tensor]  # (x (N, C, H, W), y (N,))


def check_images(data: Images, what: str) -> Images:
    """``data`` as (x (N, C, H, W) float, y (N,) int64) with N >= 1; ValueError naming ``what`` otherwise."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what} must be a pair (images (N, C, H, W), labels (N,)), got {type(data).__name__}")
    x, y = data
    if not (torch.is_tensor(x) and torch.is_tensor(y) and x.ndim == 4 and y.ndim == 1 and len(x) == len(y) > 0):
        raise ValueError(f"{what} must be a pair (images (N, C, H, W), labels (N,)) of equal length >= 1")
    if x.is_floating_point() is False or y.is_floating_point():
        raise ValueError(f"{what}: images must be float and labels integer")
    return x, y.long()


def sample_batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` index batches drawn by epochs of a seeded permutation of range(n)."""
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    order, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        yield order[pos:pos + batch_size]
        pos += batch_size


def batchnorm_l1(model: nn.Module) -> torch.Tensor:
    """sum |gamma| over every batch norm of ``model`` (network slimming's sparsity penalty)."""
    gammas = [m.weight.abs().sum() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return torch.stack(gammas).sum() if gammas else torch.zeros(())


def train_steps(model: nn.Module, data: Images, steps: int, lr: float, batch_size: int, seed: int,
                l1_penalty: float = 0.0, desc: str = "train", progress: bool = True) -> list[float]:
    """Train ``model`` in place for ``steps`` steps of AdamW (no weight decay) at ``lr`` with a cosine schedule,
    cross-entropy + ``l1_penalty`` x :func:`batchnorm_l1`; returns the losses. Leaves the model in eval mode."""
    x, y = data
    losses: list[float] = []
    if steps == 0:
        return losses
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    bar = tqdm(sample_batches(len(x), batch_size, steps, seed), total=steps, desc=desc, disable=not progress,
               leave=False)
    for idx in bar:
        loss = F.cross_entropy(model(x[idx]), y[idx])  # x[idx]: (B, C, H, W)
        if l1_penalty:
            loss = loss + l1_penalty * batchnorm_l1(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, data: Images, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` in eval mode on ``data``."""
    x, y = data
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def calibration_inputs(data: Images, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """``batches`` input batches drawn from ``data`` (seeded) for batch-norm recalibration."""
    x, _ = data
    return [x[idx] for idx in sample_batches(len(x), batch_size, batches, seed)]
