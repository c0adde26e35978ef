"""Training recipes of the vision pruning methods (SaiT, AS-ViT) on the shared Accelerate loop.

Data: any map-style dataset of ``(pixel_values [3, H, W], label)`` pairs (e.g.
:class:`trimformer.vision.data.FashionMNIST`). Batches are shuffled per epoch from the seed, as for text,
and :func:`trimformer.training.run_steps` does the rest (seeding, progress bar, resumable state).

Teachers (a design choice, recorded here):

- SaiT: the *same model's dense pass*, run without gradient at the start of every sparse step. The whole
  point of SaiT is one set of weights for every sparsity, dense included; a separate frozen copy would cost
  a second model in memory and would not follow the dense path as it is fine-tuned on the target data.
  Token-selection distillation uses the class attention of a deeper block (``distill_layer``, default the
  last) of the dense pass as the target distribution of each pruning stage's importance.
- AS-ViT: a *frozen copy of the dense model* taken before training (DynamicViT-style, as the paper), since
  its weights are fine-tuned under pruning and its own dense pass is never trained.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from trimformer.methods.asvit import ASViTPolicy, ste_flops_ratio
from trimformer.methods.sait import SaiTConfig, SaiTPolicy, score_distillation_kl
from trimformer.pipeline import _decay_groups, bisect_knob, flops_ratio_on
from trimformer.pruned import TokenPrunedModel
from trimformer.training import TrainConfig, get_accelerator, run_steps
from trimformer.vision.data import image_collate


def image_epoch_loader(data: Dataset, batch_size: int, seed: int, epoch: int) -> DataLoader:
    """One epoch of ``data`` in an order fixed by (seed, epoch); the last partial batch is dropped."""
    order = list(range(len(data)))  # type: ignore[arg-type]
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return DataLoader(Subset(data, order), batch_size=batch_size, shuffle=False, collate_fn=image_collate,
                      drop_last=True)


def image_batches(data: Dataset, batch_size: int, num_batches: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A fixed, seeded set of unlabelled batches (calibration)."""
    order = list(range(len(data)))  # type: ignore[arg-type]
    random.Random(seed + 17).shuffle(order)
    order = order[:batch_size * num_batches]
    batches = []
    for start in range(0, len(order), batch_size):
        batch = image_collate([data[i] for i in order[start:start + batch_size]])
        batches.append({"pixel_values": batch["pixel_values"]})
    return batches



def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """T^2 KL(teacher || student) of the softened class distributions, mean over the batch. [B, C] -> scalar."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def _require(model: TokenPrunedModel, kind: type) -> None:
    if not isinstance(model.policy, kind):
        raise ValueError(f"model's policy is {type(model.policy).__name__}, expected {kind.__name__}: "
                         "build it with trimformer.prune(model, config)")


def sait_level_for_step(config: SaiTConfig, seed: int, step: int) -> float | None:
    """The level of training step ``step``: None on dense steps, else drawn from ``train_levels`` by (seed, step)."""
    if config.dense_every and step % config.dense_every == 0:
        return None
    return random.Random(seed * 7919 + step).choice(config.train_levels)


def train_sait(model: TokenPrunedModel, data: Dataset, config: TrainConfig, state_dir: str | Path | None = None,
               ) -> dict:
    """SaiT: dense and sparse passes with shared weights, logit and token-selection distillation.

    Dense step: CE + token distillation within the pass. Sparse step at a sampled level: a gradient-free dense
    pass gives the teacher logits and the target attention; loss = (1 - a) CE + a KD + w token distillation.
    Runs in masked mode (scores of every stage stay at original positions); leaves the model packed, in eval
    mode, at its previous level. Returns the per-step logs.
    """
    _require(model, SaiTPolicy)
    policy: SaiTPolicy = model.policy  # type: ignore[assignment]
    cfg = policy.config()
    num_prefix = model.adapter.num_prefix_tokens(model.model)
    level_before, mode_before = policy.level, model.mode
    model.mode = "masked"

    def token_loss(student, target: torch.Tensor) -> torch.Tensor:
        losses = []
        for layer in policy.stages:
            record = student.at(layer)
            candidates = record.alive.clone()
            candidates[:, :num_prefix] = False
            losses.append(score_distillation_kl(record.scores, target.detach(), candidates))
        return torch.stack(losses).mean()

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor], step: int):
        pixels, labels = batch["pixel_values"], batch["labels"]
        level = sait_level_for_step(cfg, config.seed, step)
        if level is None:
            with policy.at_level(None), policy.capture() as cap:
                out = m(pixel_values=pixels)
            ce = F.cross_entropy(out.logits, labels)
            tok = token_loss(cap, cap.at(policy.distill_layer).scores)
            loss = ce + cfg.token_distill_weight * tok
            return loss, {"ce": float(ce.detach()), "tok": float(tok.detach()), "level": 1.0, "flops": 1.0}
        with torch.no_grad(), policy.at_level(None), policy.capture() as teacher_cap:
            teacher = m(pixel_values=pixels)
        with policy.at_level(level), policy.capture() as cap:
            out = m(pixel_values=pixels)
        ce = F.cross_entropy(out.logits, labels)
        kd = distillation_kl(out.logits, teacher.logits, cfg.kd_temperature)
        tok = token_loss(cap, teacher_cap.at(policy.distill_layer).scores)
        loss = (1.0 - cfg.kd_weight) * ce + cfg.kd_weight * kd + cfg.token_distill_weight * tok
        return loss, {"ce": float(ce.detach()), "kd": float(kd.detach()), "tok": float(tok.detach()),
                      "level": float(level), "flops": float(out.flops_ratio.detach())}

    groups = _decay_groups(model, config.lr, config.weight_decay, set())
    try:
        logs = run_steps(model, loss_fn, groups, lambda epoch, bs: image_epoch_loader(data, bs, config.seed, epoch),
                         len(data), config, cfg.steps, "sait", state_dir)  # type: ignore[arg-type]
    finally:
        policy.set_level(level_before)
        model.mode = mode_before
    model.eval()
    return {"train": logs}


def calibrate_asvit(model: TokenPrunedModel, batches: list[dict[str, torch.Tensor]], target: float,
                    ) -> tuple[float, float]:
    """Set every stage's threshold to one value that reaches ``target`` FLOPs on ``batches`` (hard masks)."""
    _require(model, ASViTPolicy)
    policy: ASViTPolicy = model.policy  # type: ignore[assignment]
    thresholds = policy.thresholds

    def set_threshold(value: float) -> None:
        with torch.no_grad():
            thresholds.fill_(value)

    high = 1.0  # doubled until the target is reached (relative scores go up to the token count)
    set_threshold(high)
    while flops_ratio_on(model, batches) > target and high < policy.config().max_threshold:
        high *= 2
        set_threshold(high)
    return bisect_knob(set_threshold, lambda: flops_ratio_on(model, batches), target, 0.0, high, decreasing=True,
                       iterations=20)


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A gradient-free copy of ``model`` in eval mode (the dense teacher of AS-ViT)."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def train_asvit(model: TokenPrunedModel, data: Dataset, config: TrainConfig, state_dir: str | Path | None = None,
                teacher: nn.Module | None = None) -> dict:
    """AS-ViT: (calibrate the thresholds to rho) -> train weights and thresholds with
    CE + budget_weight |FLOPs fraction - rho| + kd_weight KL(dense teacher || student).

    ``teacher`` (a transformers classifier): default a frozen copy of ``model.model`` taken now. The FLOPs
    fraction is the batch's, straight-through (hard value, soft-mask gradient). Trains in masked mode; leaves the model
    in eval mode and its previous execution mode. Returns the calibration, per-step logs and final thresholds.
    """
    _require(model, ASViTPolicy)
    policy: ASViTPolicy = model.policy  # type: ignore[assignment]
    cfg = policy.config()
    history: dict = {}
    if cfg.init_threshold is None:
        batches = image_batches(data, config.batch_size, cfg.calibration_batches, seed=config.seed)
        history["initial_threshold"], history["initial_ratio"] = calibrate_asvit(model, batches, cfg.target_flops)
    teacher = (teacher if teacher is not None else frozen_teacher(model.model)).to(get_accelerator().device)
    blocks = model.adapter.blocks(model.model)
    hidden, mlp = blocks[0].hidden_size, blocks[0].mlp_size
    mode_before, model.mode = model.mode, "masked"

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor], step: int):
        pixels, labels = batch["pixel_values"], batch["labels"]
        with torch.no_grad():
            teacher_logits = teacher(pixel_values=pixels).logits  # [B, C]
        with policy.capture() as cap:
            out = m(pixel_values=pixels)
        ce = F.cross_entropy(out.logits, labels)
        ratio = ste_flops_ratio(out.n_in, out.n_out, out.dense_flops, cap, hidden, mlp)
        budget = (ratio - cfg.target_flops).abs()
        kd = distillation_kl(out.logits, teacher_logits)
        loss = ce + cfg.budget_weight * budget + cfg.kd_weight * kd
        return loss, {"ce": float(ce.detach()), "kd": float(kd.detach()), "flops": float(ratio.detach())}

    threshold_ids = {id(policy.thresholds)}
    groups = _decay_groups(model, config.lr, config.weight_decay, threshold_ids)
    groups.append({"params": [policy.thresholds], "lr": cfg.threshold_lr, "weight_decay": 0.0})
    try:
        history["train"] = run_steps(model, loss_fn, groups,
                                     lambda epoch, bs: image_epoch_loader(data, bs, config.seed, epoch),
                                     len(data), config, cfg.steps, "asvit", state_dir)  # type: ignore[arg-type]
    finally:
        model.mode = mode_before
    history["thresholds"] = policy.thresholds.detach().tolist()
    model.eval()
    return history


def fit_vision(model: TokenPrunedModel, data: Dataset, config: TrainConfig | None = None,
               state_dir: str | Path | None = None) -> dict:
    """Train the SaiT or AS-ViT pruning of ``model`` on ``data`` with its own recipe."""
    config = config or TrainConfig()
    if isinstance(model.policy, SaiTPolicy):
        return train_sait(model, data, config, state_dir)
    if isinstance(model.policy, ASViTPolicy):
        return train_asvit(model, data, config, state_dir)
    raise ValueError("model has no SaiT/AS-ViT policy: build it with trimformer.prune(model, config)")
