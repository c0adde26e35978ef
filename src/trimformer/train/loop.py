"""The training loop shared by dense fine-tuning and every pruning stage, on HF Accelerate.

The same code runs in one process or several (``accelerate launch`` / ``torchrun``): batches are
sharded by Accelerate, gradients all-reduced by DDP. Seeded, with a progress bar, and resumable:
``state_dir`` receives the weights, optimizer and scheduler state every ``save_every`` steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from trimformer.config import JsonConfig
from trimformer.data.batching import Collate, epoch_loader
from trimformer.io_utils import atomic_write_dir, atomic_write_json
from trimformer.train.state import StaleStateError

SCHEDULES = ("linear", "cosine")
NO_DECAY_SUFFIXES = ("position_embeddings", "cls_token", "mask_token", "distillation_token")


@dataclass
class TrainConfig(JsonConfig):
    """Optimisation recipe of one training run (recorded in every checkpoint).

    AdamW at ``lr`` (the classification head at ``head_lr``; None = ``lr``) with ``weight_decay`` on weight
    matrices; ``schedule``: linear warm-up over ``warmup_ratio`` of the steps, then linear or cosine decay to 0;
    ``max_grad_norm``: clip the gradient norm (None = no clipping). ``save_every``: steps between resumable states.
    """

    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 0
    save_every: int = 50
    head_lr: float | None = None
    schedule: str = "linear"
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_length", "seed", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {self.batch_size} and "
                             f"{self.max_length}")
        if self.seed < 0 or self.save_every < 1:
            raise ValueError(f"seed must be >= 0 and save_every >= 1, got {self.seed} and {self.save_every}")
        for name in ("lr", "head_lr", "max_grad_norm"):
            value = getattr(self, name)
            if (value is not None or name == "lr") and not (isinstance(value, (int, float))
                                                            and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.warmup_ratio, (int, float)) and 0.0 <= self.warmup_ratio < 1.0):
            raise ValueError(f"warmup_ratio is a fraction of the steps in [0, 1), got {self.warmup_ratio!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


class TrainingDivergedError(ValueError, FloatingPointError):
    """The loss stopped being finite (a learning rate too high for the model, or broken inputs)."""


_accelerator: Accelerator | None = None


def get_accelerator() -> Accelerator:
    """One Accelerator per process (it owns the process group)."""
    global _accelerator
    if _accelerator is None:
        _accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    return _accelerator


def _stage_folder(state_dir: Path, stage: str) -> Path:
    """The state of one stage (each stage keeps its own, so a run that died in a later stage resumes there and skips
    the finished ones): weights, optimizer and progress, written together as one folder, atomically."""
    return state_dir / stage


def _save_state(state_dir: Path, module: nn.Module, optimizer, scheduler, step: int, stage: str,
                identity: dict) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    opt = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}

    def write(folder: Path) -> None:
        save_file(state, str(folder / "weights.safetensors"))
        torch.save(opt, folder / "optimizer.pt")
        atomic_write_json(folder / "progress.json", {"step": step, "stage": stage, **identity})

    atomic_write_dir(_stage_folder(state_dir, stage), write)


def _load_state(state_dir: Path, module: nn.Module, optimizer, scheduler, stage: str, identity: dict) -> int:
    folder = _stage_folder(state_dir, stage)
    if not (folder / "progress.json").is_file():
        return 0
    try:
        progress = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
        saved = {k: progress.get(k) for k in identity}
        if saved != identity:
            changed = [f"{k}: saved {saved[k]!r}, now {identity[k]!r}" for k in identity if saved[k] != identity[k]]
            raise StaleStateError(f"{folder} holds the {stage} state of another run ({'; '.join(changed)}); pass "
                                  "--restart (restart=True in Python) to discard it, or choose another --out")
        module.load_state_dict(load_file(str(folder / "weights.safetensors")))
        opt = torch.load(folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
    except StaleStateError:
        raise
    except Exception as err:  # torch, safetensors and json raise many types for a damaged file
        raise StaleStateError(f"{folder}: the saved {stage} state cannot be read ({type(err).__name__}: {err}); pass "
                              "--restart (restart=True in Python) to discard it") from err
    return int(progress["step"])


StepLoss = Callable[[nn.Module, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, float]]]


def param_groups(module: nn.Module, lr: float, weight_decay: float, exclude: set[int] | None = None,
                 head_lr: float | None = None) -> list[dict]:
    """AdamW groups of ``module``'s trainable parameters: weight decay on matrices, none on biases, norms and
    position / class / mask token embeddings; the classification head (``classifier.*``) at ``head_lr`` when given.
    Parameters whose id is in ``exclude`` are left out (a method adds them in its own group)."""
    exclude = exclude or set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        decay = p.dim() >= 2 and "LayerNorm" not in name and not name.endswith(NO_DECAY_SUFFIXES)
        head = head_lr is not None and (name.startswith("classifier.") or ".classifier." in name)
        groups.setdefault((head, decay), []).append(p)
    return [{"params": groups.get((head, decay), []), "lr": head_lr if head else lr,
             "weight_decay": weight_decay if decay else 0.0}
            for head in ((False, True) if head_lr is not None else (False,)) for decay in (True, False)]


def train_steps(
    module: nn.Module,
    loss_fn: StepLoss,
    groups: list[dict],
    data: Sequence,
    collate: Collate,
    config: TrainConfig,
    steps: int,
    stage: str,
    state_dir: str | Path | None = None,
) -> list[dict[str, float]]:
    """Run ``steps`` optimiser steps of ``loss_fn(model, batch, step) -> (loss, logs)`` on ``data``; returns the
    per-step logs. The same loop serves text and images: ``data`` is any map-style dataset of (input, label)
    items and ``collate`` makes the batch (:mod:`trimformer.data.batching`). Epochs follow
    :func:`~trimformer.data.batching.epoch_order`; ``loss_fn`` gets the 0-based step, so that step-dependent
    recipes (SaiT's dense/sparse alternation) continue identically after a resume from ``state_dir``.
    """
    num_examples = len(data)
    if steps <= 0:
        return []
    accelerator = get_accelerator()
    set_seed(config.seed)
    optimizer = torch.optim.AdamW(groups)
    make_schedule = get_cosine_schedule_with_warmup if config.schedule == "cosine" else \
        get_linear_schedule_with_warmup
    scheduler = make_schedule(optimizer, int(config.warmup_ratio * steps), steps)
    start = 0
    state_path = Path(state_dir) if state_dir is not None else None
    identity = {"steps": steps, "num_examples": num_examples, "train": config.to_dict(),
                "processes": accelerator.num_processes}  # the global batch, hence the data order
    if state_path is not None:
        start = _load_state(state_path, module, optimizer, scheduler, stage, identity)
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
        loader = accelerator.prepare(epoch_loader(data, collate, global_batch // accelerator.num_processes,
                                                  config.seed, epoch))
        if skip:
            loader = accelerator.skip_first_batches(loader, skip)
        for batch in loader:
            # Dropout randomness depends only on (seed, step, rank): a resumed run continues identically.
            torch.manual_seed(config.seed * 1_000_003 + step * 101 + accelerator.process_index)
            loss, info = loss_fn(model, batch, step)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"{stage}: the loss became {loss.item()} at step {step}; lower the "
                                            "learning rate (--lr) or check the data for broken inputs")
            accelerator.backward(loss)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            logs.append({"step": step, "loss": float(loss.detach()), **info})
            bar.update(1)
            bar.set_postfix(loss=f"{logs[-1]['loss']:.3f}", **{k: f"{v:.3f}" for k, v in info.items()})
            if state_path is not None and accelerator.is_main_process and (
                    step % config.save_every == 0 or step == steps):
                _save_state(state_path, accelerator.unwrap_model(model), optimizer, scheduler, step, stage,
                            identity)
            if step >= steps:
                break
    bar.close()
    accelerator.wait_for_everyone()
    return logs


def epochs_to_steps(num_examples: int, batch_size: int, epochs: float) -> int:
    """Optimiser steps for ``epochs`` passes over ``num_examples`` (global batch size)."""
    return max(1, int(epochs * (num_examples // batch_size)))


def is_main_process() -> bool:
    """Whether this process writes files (the first of a data-parallel run, or the only one)."""
    return get_accelerator().is_main_process
