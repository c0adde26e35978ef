"""The Python API's configs refuse out-of-range values when built (``__post_init__``), as the CLI does when it parses:
NaN and infinite numbers, negative or fractional counts, negative weights. And the training-recipe fields added for
the vision fine-tuning recipe (head_lr, schedule, max_grad_norm) each change what training does."""

from __future__ import annotations

import math

import pytest
import torch

from trimformer import ASViTConfig, EViTConfig, LTPConfig, SaiTConfig, TopKConfig, TrainConfig
from trimformer.data.images import image_collate
from trimformer.testing import random_pixels, tiny_vision_model
from trimformer.train.finetune import finetune_config, finetune_dense
from trimformer.train.loop import param_groups

NAN, INF = math.nan, math.inf

BAD = [
    (LTPConfig, {"temperature": NAN}, "temperature"),
    (LTPConfig, {"final_threshold": NAN}, "final_threshold"),
    (LTPConfig, {"lambda_": -0.1}, "lambda_"),
    (LTPConfig, {"lambda_": INF}, "lambda_"),
    (LTPConfig, {"budget_weight": -1.0}, "budget_weight"),
    (LTPConfig, {"soft_steps": -1}, "soft_steps"),
    (LTPConfig, {"hard_steps": 2.5}, "hard_steps"),
    (LTPConfig, {"threshold_lr": 0.0}, "threshold_lr"),
    (LTPConfig, {"calibration_batches": 0}, "calibration_batches"),
    (TopKConfig, {"hard_steps": -5}, "hard_steps"),
    (TopKConfig, {"calibration_batches": 0}, "calibration_batches"),
    (SaiTConfig, {"kd_temperature": NAN}, "kd_temperature"),
    (SaiTConfig, {"token_distill_weight": NAN}, "token_distill_weight"),
    (SaiTConfig, {"train_levels": (0.5, NAN)}, "train_levels"),
    (SaiTConfig, {"steps": 1.5}, "steps"),
    (ASViTConfig, {"temperature": NAN}, "temperature"),
    (ASViTConfig, {"budget_weight": NAN}, "budget_weight"),
    (ASViTConfig, {"init_threshold": INF}, "init_threshold"),
    (ASViTConfig, {"steps": -1}, "steps"),
    (EViTConfig, {"keep_rate": NAN}, "keep_rate"),
    (TrainConfig, {"lr": NAN}, "lr"),
    (TrainConfig, {"lr": INF}, "lr"),
    (TrainConfig, {"weight_decay": -0.1}, "weight_decay"),
    (TrainConfig, {"weight_decay": NAN}, "weight_decay"),
    (TrainConfig, {"warmup_ratio": 1.5}, "warmup_ratio"),
    (TrainConfig, {"batch_size": 2.5}, "batch_size"),
    (TrainConfig, {"seed": -1}, "seed"),
    (TrainConfig, {"save_every": 0}, "save_every"),
    (TrainConfig, {"head_lr": 0.0}, "head_lr"),
    (TrainConfig, {"max_grad_norm": -1.0}, "max_grad_norm"),
    (TrainConfig, {"schedule": "step"}, "schedule"),
]


@pytest.mark.parametrize("cls,kwargs,field", BAD, ids=[f"{c.__name__}-{f}-{list(k.values())[0]}" for c, k, f in BAD])
def test_out_of_range_config_values_are_refused(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_defaults_and_recipes_are_valid():
    for cls in (LTPConfig, TopKConfig, SaiTConfig, ASViTConfig, EViTConfig, TrainConfig):
        cls()
    vision = finetune_config("vision", batch_size=4)
    assert (vision.head_lr, vision.schedule, vision.max_grad_norm, vision.batch_size) == (1e-3, "cosine", 1.0, 4)
    assert finetune_config("text").lr == 1e-4
    with pytest.raises(ValueError, match="task"):
        finetune_config("audio")


def _images(n: int = 8) -> list[tuple[torch.Tensor, int]]:
    pixels = random_pixels(n, 32, seed=1)
    return [(pixels[i], i % 5) for i in range(n)]


def _finetuned(**config) -> dict[str, torch.Tensor]:
    model = tiny_vision_model("vit", seed=0).train()
    finetune_dense(model, _images(), image_collate, TrainConfig(batch_size=4, lr=1e-3, seed=0, **config), steps=4)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_head_lr_gives_the_classifier_its_own_rate():
    model = tiny_vision_model("vit")
    groups = param_groups(model, 1e-4, 0.01, head_lr=1e-2)
    head = {id(p) for n, p in model.named_parameters() if n.startswith("classifier.")}
    assert all(g["lr"] == 1e-2 for g in groups if any(id(p) in head for p in g["params"]))
    assert all(g["lr"] == 1e-4 for g in groups if g["params"] and not any(id(p) in head for p in g["params"]))
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(model.vit.embeddings.position_embeddings) in no_decay and id(model.vit.embeddings.cls_token) in no_decay
    base = _finetuned()
    assert _differs(base, _finetuned(head_lr=1e-1), "classifier.")


def test_schedule_and_gradient_clipping_change_training():
    base = _finetuned(warmup_ratio=0.25)
    assert _differs(base, _finetuned(warmup_ratio=0.25, schedule="cosine"))
    assert _differs(base, _finetuned(warmup_ratio=0.25, max_grad_norm=1e-3))
    assert not _differs(base, _finetuned(warmup_ratio=0.25))  # seeded: the knob is the only difference
