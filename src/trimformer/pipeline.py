"""End-to-end recipes: dense fine-tuning, threshold calibration to a FLOPs target, LTP and top-k."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trimformer.methods import LTPConfig, LTPPolicy, TopKConfig, TopKPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.text_data import TextDataset
from trimformer.training import TrainConfig, get_accelerator, train_loop, unlabelled_batches


def _decay_groups(module: torch.nn.Module, lr: float, weight_decay: float, exclude: set[int]) -> list[dict]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        (no_decay if p.dim() < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def finetune_dense(model: torch.nn.Module, data: TextDataset, tokenizer, config: TrainConfig, steps: int,
                   state_dir: str | Path | None = None) -> list[dict[str, float]]:
    """Plain fine-tuning of a transformers classifier (its own fast forward)."""

    def loss_fn(m, batch):
        return m(**batch).loss, {}

    groups = _decay_groups(model, config.lr, config.weight_decay, set())
    logs = train_loop(model, loss_fn, groups, data, tokenizer, config, steps, "finetune", state_dir)
    model.eval()
    return logs


def calibration_batches(data: TextDataset, tokenizer, max_length: int, num_batches: int,
                        batch_size: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A fixed, seeded set of unlabelled batches for FLOPs calibration."""
    sample = data.subset(min(len(data), num_batches * batch_size), seed=seed + 17)
    return unlabelled_batches(sample, tokenizer, batch_size, max_length)


@torch.no_grad()
def flops_ratio_on(model: TokenPrunedModel, batches: list[dict[str, torch.Tensor]]) -> float:
    """Pruned / dense FLOPs over ``batches`` (hard masks; packed execution, the fastest)."""
    was_training, mode = model.training, model.mode
    model.eval()
    model.mode = "packed"
    flops = dense = 0.0
    for batch in batches:
        out = model(**batch)
        flops += float(out.flops.sum())
        dense += float(out.dense_flops.sum())
    model.train(was_training)
    model.mode = mode
    return flops / dense


def bisect_knob(set_knob: Callable[[float], None], measure: Callable[[], float], target: float,
                low: float, high: float, decreasing: bool, iterations: int = 14,
                tolerance: float = 0.003) -> tuple[float, float]:
    """Find the knob value whose measured FLOPs ratio is closest to ``target`` by bisection.

    ``decreasing``: the ratio falls as the knob grows (LTP threshold scale); else it rises (keep rate).
    Returns (knob, achieved ratio).
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


def calibrate_ltp(model: TokenPrunedModel, batches, target: float) -> tuple[float, float]:
    """Scale the base thresholds so that hard LTP reaches ``target`` FLOPs on ``batches``."""
    policy: LTPPolicy = model.policy  # type: ignore[assignment]
    stage = policy.stage
    policy.stage = "hard"

    def set_scale(value: float) -> None:
        policy.thresholds.scale.fill_(value)

    def measure() -> float:
        return flops_ratio_on(model, batches)

    high = 1.0
    set_scale(high)
    while measure() > target and high < 2**12:
        high *= 2
        set_scale(high)
    result = bisect_knob(set_scale, measure, target, 0.0, high, decreasing=True)
    policy.stage = stage
    return result


def calibrate_topk(model: TokenPrunedModel, batches, target: float) -> tuple[float, float]:
    """Set the final keep rate of the top-k cascade so that it reaches ``target`` FLOPs."""
    policy: TopKPolicy = model.policy  # type: ignore[assignment]

    def set_rate(value: float) -> None:
        policy.final_keep_rate.fill_(value)

    return bisect_knob(set_rate, lambda: flops_ratio_on(model, batches), target, 0.0, 1.0, decreasing=False)


def _hard_finetune(model: TokenPrunedModel, data, tokenizer, config: TrainConfig, steps: int, stage: str,
                   state_dir) -> list[dict[str, float]]:
    model.mode = "masked"
    policy_params = list(model.policy.parameters()) if model.policy is not None else []
    for p in policy_params:
        p.requires_grad_(False)
    frozen = {id(p) for p in policy_params}

    def loss_fn(m, batch):
        out = m(**batch)
        return out.loss, {"flops": float(out.flops_ratio.detach())}

    groups = _decay_groups(model, config.lr, config.weight_decay, frozen)
    return train_loop(model, loss_fn, groups, data, tokenizer, config, steps, stage, state_dir)


def prune_ltp(model: TokenPrunedModel, data: TextDataset, tokenizer, ltp: LTPConfig, config: TrainConfig,
              state_dir: str | Path | None = None) -> dict:
    """LTP: (calibrate) -> soft stage -> (recalibrate) -> hard stage. ``model.policy`` must be an LTPPolicy."""
    policy: LTPPolicy = model.policy  # type: ignore[assignment]
    calib = calibration_batches(data, tokenizer, config.max_length, ltp.calibration_batches, seed=config.seed)
    history: dict = {}
    if ltp.target_flops is not None:
        history["initial_scale"], history["initial_ratio"] = calibrate_ltp(model, calib, ltp.target_flops)

    policy.stage = "soft"
    model.mode = "masked"
    model.train()
    real_counts = None

    def soft_loss(m, batch):
        nonlocal real_counts
        out = m(**batch)
        lengths = batch["attention_mask"].sum(1, keepdim=True).to(out.n_out.dtype)  # [B, 1]
        mean_mask = (out.n_out / lengths).mean(0)  # [L]
        if ltp.target_flops is None:
            reg = ltp.lambda_ * mean_mask.sum()
        else:
            reg = ltp.budget_weight * (out.flops_ratio - ltp.target_flops).abs()
        return out.loss + reg, {"ce": float(out.loss.detach()), "flops": float(out.flops_ratio.detach())}

    threshold_params = [policy.thresholds.learned]
    policy.thresholds.learned.requires_grad_(True)
    groups = _decay_groups(model, config.lr, config.weight_decay, {id(p) for p in threshold_params})
    groups.append({"params": threshold_params, "lr": ltp.threshold_lr, "weight_decay": 0.0})
    history["soft"] = train_loop(model, soft_loss, groups, data, tokenizer, config, ltp.soft_steps,
                                 "ltp-soft", state_dir)
    policy.stage = "hard"
    if ltp.target_flops is not None:
        history["final_scale"], history["calibrated_ratio"] = calibrate_ltp(model, calib, ltp.target_flops)
    history["hard"] = _hard_finetune(model, data, tokenizer, config, ltp.hard_steps, "ltp-hard", state_dir)
    history["thresholds"] = policy.thresholds().tolist()
    model.mode = "packed"
    model.eval()
    return history


def prune_topk(model: TokenPrunedModel, data: TextDataset, tokenizer, topk: TopKConfig, config: TrainConfig,
               state_dir: str | Path | None = None) -> dict:
    """Static top-k cascade: (calibrate the keep rate) -> hard-mask fine-tuning."""
    history: dict = {}
    if topk.target_flops is not None:
        calib = calibration_batches(data, tokenizer, config.max_length, topk.calibration_batches,
                                    seed=config.seed)
        history["final_keep_rate"], history["calibrated_ratio"] = calibrate_topk(model, calib, topk.target_flops)
        model.policy.topk_config.final_keep_rate = history["final_keep_rate"]
    history["hard"] = _hard_finetune(model, data, tokenizer, config, topk.hard_steps, "topk-hard", state_dir)
    model.mode = "packed"
    model.eval()
    return history



def fit(model: TokenPrunedModel, data: TextDataset, tokenizer, config: TrainConfig | None = None,
        state_dir: str | Path | None = None) -> dict:
    """Learn the pruning of ``model`` (LTP: soft then hard stage; top-k: hard stage) on ``data``."""
    config = config or TrainConfig()
    if isinstance(model.policy, LTPPolicy):
        return prune_ltp(model, data, tokenizer, model.policy.config(), config, state_dir)
    if isinstance(model.policy, TopKPolicy):
        return prune_topk(model, data, tokenizer, model.policy.config(), config, state_dir)
    raise ValueError("model has no pruning policy to train: create it with trimformer.prune(model, config)")



def is_main_process() -> bool:
    return get_accelerator().is_main_process
