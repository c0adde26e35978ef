"""``trimformer.fit``: train a pruned model's method with the recipe its config type names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimformer.methods import method_of
from trimformer.pruned import TokenPrunedModel
from trimformer.training import TrainConfig


def fit(model: TokenPrunedModel, data: Any, config: TrainConfig | None = None, *, tokenizer: Any = None,
        state_dir: str | Path | None = None) -> dict:
    """Learn the pruning of ``model`` on ``data`` with its method's recipe (LTP: soft then hard stage; top-k:
    hard stage; SaiT: dense/sparse passes with distillation; AS-ViT: thresholds under a FLOPs budget).

    Text methods take a ``TextDataset`` and the ``tokenizer``; vision methods an image dataset of
    (pixels [3, H, W], label) pairs. ``state_dir`` saves progress so that an interrupted run resumes. Returns the
    training history.
    """
    if not isinstance(model, TokenPrunedModel) or model.policy is None:
        raise ValueError("model has no pruning policy to train: create it with trimformer.prune(model, config)")
    spec = method_of(model.policy.config())
    if not spec.trainable:
        raise ValueError(f"{spec.name} is training free: use the pruned model as it is")
    config = config or TrainConfig()
    if model.adapter.task == "text":
        if tokenizer is None:
            raise ValueError(f"{spec.name} trains on texts: pass tokenizer=the model's tokenizer")
        from trimformer.pipeline import fit as fit_text

        return fit_text(model, data, tokenizer, config, state_dir)
    from trimformer.vision_training import fit_vision

    return fit_vision(model, data, config, state_dir)
