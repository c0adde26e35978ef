"""SaiT (Li, Thorsley, Hassoun 2022): token pruning in early blocks with a sparsity level chosen at run time.

At each pruning stage (default: 0-indexed block 3 of 12, scaled to the model's depth) the patch tokens are
ranked by their importance, the attention paid to them by [CLS] (mean over heads, or weighted per head as
in AS-ViT), and either

- ``policy='topk'``: a fixed fraction of them is kept (level = keep rate), or
- ``policy='mass'``: the smallest set whose share of the importance mass reaches the level is kept, so a
  cluttered image (flat importance) keeps more tokens than a simple one (peaked importance).

Prefix tokens ([CLS], DeiT's distillation token) are always kept and never counted. The level is not part of
the weights: ``policy.set_level(x)`` or ``with policy.at_level(x):`` switch one trained model between
sparsities; ``None`` (or 1.0) runs the dense model exactly. The training recipe (dense/sparse passes with
shared weights, logit and token-selection distillation) is :func:`fit_sait`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.config import JsonConfig, check_numbers
from trimformer.core.scoring import class_attention, head_weighted_class_attention
from trimformer.core.selection import (
    count_from_rate,
    keep_counts_from_rate,
    mass_keep_counts,
    protect_prefix,
    topk_mask,
)
from trimformer.data.batching import Collate
from trimformer.engine.hooks import Decision
from trimformer.methods.stages import CapturingPolicy, StageRecord, check_stage_list, policy_of, stage_blocks
from trimformer.pruned import TokenPrunedModel
from trimformer.train.loop import TrainConfig, param_groups, train_steps
from trimformer.train.losses import distillation_kl

SAIT_POLICIES = ("topk", "mass")
SAIT_SCORES = ("cls_attention", "head_weighted")
SAIT_DEFAULT_STAGES = (3,)


def sait_scores(kind: str, probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Importance [B, N] from probs [B, H, N, N] and values [B, H, N, Dh]."""
    if kind == "head_weighted":
        return head_weighted_class_attention(probs, values)
    return class_attention(probs)


def _check_level(level: float | None, name: str = "level") -> None:
    if level is not None and not (isinstance(level, (int, float)) and 0.0 < level <= 1.0):
        raise ValueError(f"{name} must be None (dense) or in (0, 1], got {level!r}")


@dataclass
class SaiTConfig(JsonConfig):
    """SaiT method and training recipe.

    policy: 'topk' (level = fraction of patch tokens kept) or 'mass' (level = share of the importance mass
        kept). score: 'cls_attention' (mean over heads) or 'head_weighted' (AS-ViT's head weighting).
    stages: 0-indexed pruning blocks; None = block 3 of 12 scaled to the depth. With several stages the level
        applies at each, to the tokens still alive.
    default_level: level when the model is built (None = dense); change it at run time with ``set_level``.
    min_keep: patch tokens kept at least, per stage.
    Training: every ``dense_every``-th step is a dense pass (2 = alternate, 0 = sparse passes only), the
    others run at a level drawn from ``train_levels``. Sparse loss = (1 - kd_weight) CE + kd_weight T^2
    KL(dense || sparse logits at temperature ``kd_temperature``); every pass adds ``token_distill_weight``
    times the KL between the class attention of block ``distill_layer`` (dense pass, detached; negative
    counts from the end) and each stage's importance, both normalised over the candidate patch tokens.
    """

    policy: str = "topk"
    score: str = "cls_attention"
    stages: tuple[int, ...] | None = None
    default_level: float | None = 0.7
    min_keep: int = 1
    train_levels: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    dense_every: int = 2
    kd_weight: float = 0.5
    kd_temperature: float = 1.0
    token_distill_weight: float = 1.0
    distill_layer: int = -1
    steps: int = 200

    def __post_init__(self) -> None:
        check_numbers(self, counts=("steps", "dense_every"), positive_counts=("min_keep",))
        if self.policy not in SAIT_POLICIES:
            raise ValueError(f"SaiT policy must be one of {SAIT_POLICIES}, got {self.policy!r}")
        if self.score not in SAIT_SCORES:
            raise ValueError(f"SaiT score must be one of {SAIT_SCORES}, got {self.score!r}")
        self.stages = check_stage_list(self.stages)
        _check_level(self.default_level, "default_level")
        self.train_levels = tuple(self.train_levels)
        if not self.train_levels:
            raise ValueError("train_levels must hold at least one level in (0, 1]")
        for level in self.train_levels:
            if level is None:
                raise ValueError("train_levels are sparse levels in (0, 1]; dense passes come from dense_every")
            _check_level(level, "train_levels entries")
        if self.min_keep < 1:
            raise ValueError(f"min_keep must be >= 1, got {self.min_keep}")
        if self.dense_every < 0 or self.dense_every == 1:
            raise ValueError(f"dense_every must be 0 (sparse passes only) or >= 2, got {self.dense_every} "
                             "(1 would never train a sparse pass)")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if self.token_distill_weight < 0:
            raise ValueError(f"token_distill_weight must be >= 0, got {self.token_distill_weight}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


class SaiTPolicy(CapturingPolicy):
    """Top-k or mass selection at the SaiT stages, at a level set at run time (not stored in the weights)."""

    method = "sait"

    def __init__(self, num_layers: int, config: SaiTConfig):
        super().__init__(num_layers)
        self.sait_config = config
        self.stages = stage_blocks(config.stages, SAIT_DEFAULT_STAGES, num_layers)
        distill = config.distill_layer + num_layers if config.distill_layer < 0 else config.distill_layer
        if not max(self.stages) < distill < num_layers:
            raise ValueError(f"distill_layer {config.distill_layer} must name a block deeper than the last "
                             f"pruning stage {max(self.stages)} of this {num_layers}-block model")
        self.distill_layer = distill
        self._level = config.default_level

    def config(self) -> SaiTConfig:
        return self.sait_config

    @property
    def level(self) -> float | None:
        """Current sparsity level: keep rate ('topk') or importance mass ('mass'); None = dense."""
        return self._level

    def set_level(self, level: float | None) -> None:
        """Switch the sparsity of the next forwards (None or 1.0: dense)."""
        _check_level(level)
        self._level = level

    @contextmanager
    def at_level(self, level: float | None) -> Iterator[SaiTPolicy]:
        """Run the forwards inside the block at ``level``, then restore the previous one."""
        previous = self._level
        self.set_level(level)
        try:
            yield self
        finally:
            self._level = previous

    @property
    def dense(self) -> bool:
        return self._level is None or self._level >= 1.0

    def decision(self, layer: int, num_prefix: int) -> Decision | None:
        prune = layer in self.stages and not self.dense
        observe = self.capturing and (layer in self.stages or layer == self.distill_layer)
        if not (prune or observe):
            return None  # exactly the dense computation
        cfg, level = self.sait_config, self._level
        kind = cfg.score if layer in self.stages else "cls_attention"  # distillation target: plain class attention

        def decide(probs: torch.Tensor, alive: torch.Tensor, values: torch.Tensor) -> torch.Tensor | None:
            scores = sait_scores(kind, probs, values)  # [B, N]
            if not prune:
                self._record(StageRecord(layer, scores, alive))
                return None
            prefix = protect_prefix(torch.zeros_like(alive), num_prefix)  # bool [B, N]
            candidates = alive & ~prefix
            if cfg.policy == "topk":
                counts = keep_counts_from_rate(candidates, level, minimum=cfg.min_keep)  # [B]
            else:
                counts = mass_keep_counts(scores, candidates, level, minimum=cfg.min_keep)  # [B]
            keep = topk_mask(scores, candidates, counts) | (prefix & alive)  # [B, N]
            self._record(StageRecord(layer, scores, alive, keep))
            return keep

        def fixed_width(n: int) -> int:  # top-K on a full row of n tokens: the prefix plus the counted candidates
            return num_prefix + count_from_rate(n - num_prefix, level, minimum=cfg.min_keep)

        # plain class attention reads [CLS]'s row only
        return Decision(decide, query_rows=1 if kind == "cls_attention" else None, needs_values=True,
                        fixed_width=fixed_width if prune and cfg.policy == "topk" else None)


def score_distillation_kl(student: torch.Tensor, target: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(target || student), both scores renormalised over the candidate tokens.

    student, target: [B, N] non-negative scores (target detached by the caller); candidates: bool [B, N].
    Rows without candidates contribute 0. Returns a scalar.
    """
    tiny = torch.finfo(student.dtype).tiny
    weights = candidates.to(student.dtype)  # [B, N]
    s = student.clamp_min(0) * weights
    t = target.clamp_min(0) * weights
    s = s / s.sum(dim=1, keepdim=True).clamp_min(tiny)
    t = t / t.sum(dim=1, keepdim=True).clamp_min(tiny)
    kl = torch.xlogy(t, t) - t * torch.log(s.clamp_min(tiny))  # [B, N]; 0 where t == 0
    return kl.sum(dim=1).mean()


def sait_level_for_step(config: SaiTConfig, seed: int, step: int) -> float | None:
    """The level of training step ``step``: None on dense steps, else drawn from ``train_levels`` by (seed, step)."""
    if config.dense_every and step % config.dense_every == 0:
        return None
    return random.Random(seed * 7919 + step).choice(config.train_levels)


def fit_sait(model: TokenPrunedModel, data: Sequence, collate: Collate, config: TrainConfig,
             state_dir: str | Path | None = None) -> dict:
    """SaiT: dense and sparse passes with shared weights, logit and token-selection distillation.

    Dense step: CE + token distillation within the pass. Sparse step at a sampled level: a gradient-free dense
    pass gives the teacher logits and the target attention; loss = (1 - a) CE + a KD + w token distillation.
    Runs in masked mode (scores of every stage stay at original positions); leaves the model packed, in eval
    mode, at its previous level. Returns the per-step logs.
    """
    policy: SaiTPolicy = policy_of(model, SaiTPolicy)
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

    groups = param_groups(model, config.lr, config.weight_decay, head_lr=config.head_lr)
    try:
        logs = train_steps(model, loss_fn, groups, data, collate, config, cfg.steps, "sait", state_dir)
    finally:
        policy.set_level(level_before)
        model.mode = mode_before
    model.eval()
    return {"train": logs}
