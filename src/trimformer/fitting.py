"""``trimformer.fit``: train a pruned model's method with the recipe its config type names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trimformer.data.images import image_collate
from trimformer.data.labels import align_to_model, model_label_names, present_classes, require_classes
from trimformer.data.text import text_collate
from trimformer.methods import method_of
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import refuse_quantized
from trimformer.train.loop import TrainConfig
from trimformer.train.state import open_state, run_record


def fit(model: TokenPrunedModel, data: Sequence, config: TrainConfig | None = None, *, tokenizer: Any = None,
        state_dir: str | Path | None = None, restart: bool = False, about: dict | None = None) -> dict:
    """Learn the pruning of ``model`` on ``data`` with its method's recipe (LTP: soft then hard stage; top-k:
    hard stage; SaiT: dense/sparse passes with distillation; AS-ViT: thresholds under a FLOPs budget).

    Text methods take a ``TextDataset`` and the ``tokenizer``; vision methods an image dataset of
    (pixels [3, H, W], label) pairs; labels are checked against the model's (mapped by name, refused on a mismatch,
    one class refused). ``state_dir`` saves progress so that an interrupted run resumes; a state saved there for
    another model, data set or recipe is refused, or discarded with ``restart`` (:mod:`trimformer.train.state`;
    ``about``: where the model and data came from, recorded). Returns the training history.
    """
    if not isinstance(model, TokenPrunedModel) or model.policy is None:
        raise ValueError("model has no pruning policy to train: create it with trimformer.prune(model, config)")
    refuse_quantized(model, "fit")
    spec = method_of(model.policy.config())
    if spec.fit is None:
        raise ValueError(f"{spec.name} is training free: use the pruned model as it is")
    config = config or TrainConfig()
    require_classes(present_classes(data), "the training data")
    data = align_to_model(data, model_label_names(model.model.config))
    if model.adapter.task == "text":
        if tokenizer is None:
            raise ValueError(f"{spec.name} trains on texts: pass tokenizer=the model's tokenizer")
        collate = text_collate(tokenizer, config.max_length)
    else:
        collate = image_collate
    if state_dir is not None:
        record = run_record(model, data, config, None, spec.name, model.policy.config().to_dict(), about)
        state_dir = open_state(state_dir, record, restart)
    return spec.fit(model, data, collate, config, state_dir)
