"""Fine-tuning with the shared loop: a dense classifier, and a pruned model's weights under fixed pruning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from trimformer.data.batching import Collate
from trimformer.data.text import transformers_inputs
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import refuse_quantized
from trimformer.train.loop import TrainConfig, param_groups, train_steps
from trimformer.train.recipes import FINETUNE_RECIPES
from trimformer.train.state import open_state, run_record


def finetune_config(task: str, **overrides: Any) -> TrainConfig:
    """The fine-tuning recipe of ``task`` ('text' or 'vision', see ``FINETUNE_RECIPES``) with ``overrides``."""
    if task not in FINETUNE_RECIPES:
        raise ValueError(f"task must be one of {tuple(FINETUNE_RECIPES)}, got {task!r}")
    return TrainConfig(**{**FINETUNE_RECIPES[task], **overrides})


def finetune_dense(model: nn.Module, data: Sequence, collate: Collate, config: TrainConfig, steps: int,
                   state_dir: str | Path | None = None, restart: bool = False,
                   about: dict | None = None) -> list[dict[str, float]]:
    """Plain fine-tuning of a transformers classifier, text or vision, on its own forward
    (``model(**batch).loss``): text batches from ``text_collate``, images from ``image_collate``; the recipe is
    ``config`` (e.g. :func:`finetune_config`).

    ``state_dir`` saves progress so that an interrupted run resumes; a state saved there for another model, data
    set or recipe is refused, or discarded with ``restart`` (see :mod:`trimformer.train.state`). A token-pruned or
    quantized model is refused: fine-tuning comes first (finetune -> prune -> quantize)."""
    if isinstance(model, TokenPrunedModel) and model.policy is not None:
        raise ValueError("finetune_dense trains a dense model; this one is token-pruned. Fine-tune the dense model, "
                         "then prune it (finetune -> prune -> quantize); trimformer.fit trains a pruned model")
    refuse_quantized(model, "fine-tune")
    if state_dir is not None:
        state_dir = open_state(state_dir, run_record(model, data, config, steps, "finetune", None, about), restart)

    def loss_fn(m: nn.Module, batch: dict, step: int):
        return m(**transformers_inputs(batch)).loss, {}

    groups = param_groups(model, config.lr, config.weight_decay, head_lr=config.head_lr)
    logs = train_steps(model, loss_fn, groups, data, collate, config, steps, "finetune", state_dir)
    model.eval()
    return logs


def finetune_under_pruning(model: TokenPrunedModel, data: Sequence, collate: Collate, config: TrainConfig,
                           steps: int, stage: str, state_dir: str | Path | None = None) -> list[dict[str, float]]:
    """Fine-tune the weights with the policy frozen (hard masks, masked execution): LTP's hard stage and the
    top-k baseline's recipe."""
    model.mode = "masked"
    policy_params = list(model.policy.parameters()) if model.policy is not None else []
    for p in policy_params:
        p.requires_grad_(False)

    def loss_fn(m: nn.Module, batch: dict, step: int):
        out = m(**batch)
        return out.loss, {"flops": float(out.flops_ratio.detach())}

    groups = param_groups(model, config.lr, config.weight_decay, {id(p) for p in policy_params})
    return train_steps(model, loss_fn, groups, data, collate, config, steps, stage, state_dir)
