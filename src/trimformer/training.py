"""The training loop shared by dense fine-tuning and every pruning stage, on HF Accelerate.

The same code runs in one process or several (``accelerate launch`` / ``torchrun``): batches are
sharded by Accelerate, gradients all-reduced by DDP. Seeded, with a progress bar, and resumable:
``state_dir`` receives the weights, optimizer and scheduler state every ``save_every`` steps.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from trimformer.config import JsonConfig
from trimformer.io_utils import atomic_save_file, atomic_write_json
from trimformer.text_data import TextDataset


@dataclass
class TrainConfig(JsonConfig):
    """Optimisation recipe of one training run (recorded in every checkpoint)."""

    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 0
    save_every: int = 50

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_length < 2:
            raise ValueError("batch_size must be >= 1 and max_length >= 2")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")


_accelerator: Accelerator | None = None


def get_accelerator() -> Accelerator:
    """One Accelerator per process (it owns the process group)."""
    global _accelerator
    if _accelerator is None:
        _accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    return _accelerator


def make_collate(tokenizer, max_length: int) -> Callable[[list[tuple[str, int]]], dict[str, torch.Tensor]]:
    """Tokenise a list of (text, label) pairs, padded to the longest in the batch (right padding)."""

    def collate(items: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        enc = tokenizer([t for t, _ in items], truncation=True, max_length=max_length, padding="longest",
                        return_tensors="pt")
        batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        batch["labels"] = torch.tensor([y for _, y in items])
        return batch

    return collate


def unlabelled_batches(data: TextDataset, tokenizer, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """``data`` tokenised into fixed batches, in order, without labels (timing, calibration)."""
    collate = make_collate(tokenizer, max_length)
    items = list(zip(data.texts, data.labels, strict=True))
    batches = [collate(items[start:start + batch_size]) for start in range(0, len(items), batch_size)]
    for batch in batches:
        batch.pop("labels")
    return batches


def _epoch_loader(data: TextDataset, collate, batch_size: int, seed: int, epoch: int) -> DataLoader:
    order = list(range(len(data)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    items = [(data.texts[i], data.labels[i]) for i in order]
    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate, drop_last=True)


def _state_files(state_dir: Path, stage: str) -> tuple[Path, Path, Path]:
    """Weights, optimizer and progress files of one stage (each stage keeps its own, so a run that died
    in a later stage resumes there and skips the finished ones)."""
    return (state_dir / f"{stage}.weights.safetensors", state_dir / f"{stage}.optimizer.pt",
            state_dir / f"{stage}.progress.json")


def _save_state(state_dir: Path, module: nn.Module, optimizer, scheduler, step: int, stage: str) -> None:
    weights, optim, progress = _state_files(state_dir, stage)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_save_file(weights, lambda p: save_file(state, str(p)))
    opt = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    atomic_save_file(optim, lambda p: torch.save(opt, p))
    atomic_write_json(progress, {"step": step, "stage": stage})  # written last: marks the state complete


def _load_state(state_dir: Path, module: nn.Module, optimizer, scheduler, stage: str) -> int:
    weights, optim, progress = _state_files(state_dir, stage)
    if not progress.is_file():
        return 0
    step = int(json.loads(progress.read_text())["step"])
    module.load_state_dict(load_file(str(weights)))
    opt = torch.load(optim, weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return step


def train_loop(
    module: nn.Module,
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
    param_groups: list[dict],
    data: TextDataset,
    tokenizer,
    config: TrainConfig,
    steps: int,
    stage: str,
    state_dir: str | Path | None = None,
) -> list[dict[str, float]]:
    """Run ``steps`` optimiser steps of ``loss_fn(model, batch) -> (loss, logs)``; returns per-step logs."""
    collate = make_collate(tokenizer, config.max_length)

    def loader(epoch: int, batch_size: int) -> DataLoader:
        return _epoch_loader(data, collate, batch_size, config.seed, epoch)

    return run_steps(module, lambda model, batch, _step: loss_fn(model, batch), param_groups, loader, len(data),
                     config, steps, stage, state_dir)


StepLoss = Callable[[nn.Module, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, float]]]


def run_steps(
    module: nn.Module,
    loss_fn: StepLoss,
    param_groups: list[dict],
    epoch_loader: Callable[[int, int], DataLoader],
    num_examples: int,
    config: TrainConfig,
    steps: int,
    stage: str,
    state_dir: str | Path | None = None,
) -> list[dict[str, float]]:
    """The loop behind :func:`train_loop`, for any data.

    ``epoch_loader(epoch, per_process_batch_size)`` gives that epoch's DataLoader in its seeded order (drop
    the last partial batch); ``loss_fn(model, batch, step) -> (loss, logs)`` also gets the 0-based step, so
    that step-dependent recipes (SaiT's dense/sparse alternation) continue identically after a resume.
    """
    if steps <= 0:
        return []
    accelerator = get_accelerator()
    set_seed(config.seed)
    optimizer = torch.optim.AdamW(param_groups)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    start = 0
    state_path = Path(state_dir) if state_dir is not None else None
    if state_path is not None:
        start = _load_state(state_path, module, optimizer, scheduler, stage)
        if start >= steps:
            return []
    model, optimizer = accelerator.prepare(module, optimizer)
    global_batch = config.batch_size * accelerator.num_processes
    per_epoch = max(1, num_examples // global_batch)
    if num_examples < global_batch:
        raise ValueError(f"{num_examples} training examples are fewer than one batch of {global_batch}")
    logs: list[dict[str, float]] = []
    bar = tqdm(total=steps, initial=start, desc=stage, disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    model.train()
    step = start
    while step < steps:
        epoch, skip = divmod(step, per_epoch)
        loader = accelerator.prepare(epoch_loader(epoch, global_batch // accelerator.num_processes))
        if skip:
            loader = accelerator.skip_first_batches(loader, skip)
        for batch in loader:
            # Dropout randomness depends only on (seed, step, rank): a resumed run continues identically.
            torch.manual_seed(config.seed * 1_000_003 + step * 101 + accelerator.process_index)
            loss, info = loss_fn(model, batch, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{stage}: loss became {loss.item()} at step {step}; lower the lr")
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            logs.append({"step": step, "loss": float(loss.detach()), **info})
            bar.update(1)
            bar.set_postfix(loss=f"{logs[-1]['loss']:.3f}", **{k: f"{v:.3f}" for k, v in info.items()})
            if state_path is not None and accelerator.is_main_process and (
                    step % config.save_every == 0 or step == steps):
                _save_state(state_path, accelerator.unwrap_model(model), optimizer, scheduler, step, stage)
            if step >= steps:
                break
    bar.close()
    accelerator.wait_for_everyone()
    return logs


def epochs_to_steps(num_examples: int, batch_size: int, epochs: float) -> int:
    """Optimiser steps for ``epochs`` passes over ``num_examples`` (global batch size)."""
    return max(1, int(epochs * (num_examples // batch_size)))
