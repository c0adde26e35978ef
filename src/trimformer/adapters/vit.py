"""Adapter for transformers' ViT, DeiT and Dinov2 (LayerScale) image encoders and classifiers."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    Dinov2ForImageClassification,
    Dinov2Model,
    ViTForImageClassification,
    ViTModel,
)

from trimformer.adapters.base import Adapter, UnsupportedModelError, check_pixel_values, register
from trimformer.engine.view import BlockView

_BASES = (ViTModel, DeiTModel, Dinov2Model)
_HEADS = (ViTForImageClassification, DeiTForImageClassification, DeiTForImageClassificationWithTeacher,
          Dinov2ForImageClassification)


def _base_model(model: nn.Module) -> nn.Module:
    if isinstance(model, _BASES):
        return model
    for name in ("vit", "deit", "dinov2"):
        if hasattr(model, name):
            return getattr(model, name)
    raise UnsupportedModelError(f"{type(model).__name__} has no ViT/DeiT/Dinov2 backbone")


def _layers(base: nn.Module) -> nn.ModuleList:
    for holder in (base, getattr(base, "encoder", None)):
        for name in ("layers", "layer"):
            found = getattr(holder, name, None) if holder is not None else None
            if isinstance(found, nn.ModuleList):
                return found
    raise UnsupportedModelError(f"cannot find the transformer layers of {type(base).__name__}")


def _attention_parts(attn: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear, int, float,
                                                nn.Module | None]:
    """(query, key, value, output projections, heads, attention dropout p, dropout after the output projection).

    Two layouts: flat ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (ViT and DeiT; Dinov2 in recent transformers)
    and the nested ``attention.query ...`` / ``output.dense`` of Dinov2 in transformers 5.17 and older.
    """
    if hasattr(attn, "q_proj"):
        return (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, attn.num_attention_heads,
                float(attn.attention_dropout), None)
    inner, output = attn.attention, attn.output
    return (inner.query, inner.key, inner.value, output.dense, inner.num_attention_heads,
            float(inner.dropout_prob), output.dropout)


class ViTFamilyAdapter(Adapter):
    name = "vit"
    task = "vision"

    def supports(self, model: nn.Module) -> bool:
        return isinstance(model, _BASES + _HEADS)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return 2 if isinstance(_base_model(model), DeiTModel) else 1  # DeiT: [CLS] + distillation token

    def validate(self, model: nn.Module) -> None:
        kind = type(model).__name__
        cfg = model.config
        if getattr(cfg, "use_swiglu_ffn", False):
            raise UnsupportedModelError(f"{kind}: SwiGLU MLPs (use_swiglu_ffn=True) are not supported")
        if getattr(cfg, "num_register_tokens", 0):
            raise UnsupportedModelError(f"{kind}: register tokens are not supported")
        head_dim = getattr(cfg, "head_dim", None)
        if head_dim is not None and head_dim * cfg.num_attention_heads != cfg.hidden_size:
            raise UnsupportedModelError(f"{kind}: head_dim * heads != hidden_size is not supported")

    def blocks(self, model: nn.Module) -> list[BlockView]:
        views = []
        for layer in _layers(_base_model(model)):
            query, key, value, attn_out, num_heads, attn_p, out_dropout = _attention_parts(layer.attention)
            dinov2 = hasattr(layer, "layer_scale1")
            mlp = layer.mlp
            views.append(BlockView(
                query=query, key=key, value=value, attn_out=attn_out,
                mlp_in=mlp.fc1, mlp_out=mlp.fc2, activation=getattr(mlp, "activation_fn", None) or mlp.activation,
                norm_attn=layer.norm1 if dinov2 else layer.layernorm_before,
                norm_mlp=layer.norm2 if dinov2 else layer.layernorm_after,
                num_heads=num_heads, pre_norm=True,
                attn_dropout=attn_p or None,
                attn_out_dropout=out_dropout if dinov2 else layer.dropout,
                hidden_dropout=None if dinov2 else layer.dropout,
                layer_scale_attn=layer.layer_scale1 if dinov2 else None,
                layer_scale_mlp=layer.layer_scale2 if dinov2 else None,
                residual_drop=layer.drop_path if dinov2 else None,
            ))
        return views

    def check_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]) -> None:
        check_pixel_values(inputs)

    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        base = _base_model(model)
        pixels = inputs["pixel_values"]
        try:
            hidden = base.embeddings(pixels.to(base.embeddings.patch_embeddings.projection.weight.dtype))
        except ValueError as err:  # transformers' size / channel checks
            raise ValueError(f"{err} (resize the images to the model's image_size)") from err
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def head(self, model: nn.Module, hidden: torch.Tensor, alive: torch.Tensor) -> dict[str, torch.Tensor]:
        base = _base_model(model)
        hidden = base.layernorm(hidden)  # [B, M, D]
        if model is base:
            pooler = getattr(base, "pooler", None)
            return {"last_hidden_state": hidden, "pooler_output": pooler(hidden) if pooler is not None else None}
        if isinstance(model, Dinov2ForImageClassification):  # [CLS] ++ mean of the live patch tokens
            weights = alive[:, 1:, None].to(hidden.dtype)  # [B, M-1, 1]
            patch_mean = (hidden[:, 1:] * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            return {"logits": model.classifier(torch.cat([hidden[:, 0], patch_mean], dim=1))}
        if isinstance(model, DeiTForImageClassificationWithTeacher):
            cls_logits = model.cls_classifier(hidden[:, 0])
            return {"logits": (cls_logits + model.distillation_classifier(hidden[:, 1])) / 2}
        return {"logits": model.classifier(hidden[:, 0])}


register(ViTFamilyAdapter())
