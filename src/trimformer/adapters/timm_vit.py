"""Adapter for timm's ``VisionTransformer`` (optional: ``pip install trimformer[timm]``).

timm is never imported here: a model can only be a timm ``VisionTransformer`` if the user already imported
timm, so :meth:`TimmViTAdapter.supports` looks the class up in ``sys.modules``. The fused ``qkv``
projection is read through three weight-slice views, so the engine's one block step serves timm too.
Supported: the plain pre-norm ``Block`` (LayerScale, stochastic depth), class token, ``global_pool`` 'token'
or 'avg'. Refused with a clear error: register tokens, qk-norm, the extra attention / MLP norms, attention
pooling ('map'), other block types, no class token.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.adapters.base import Adapter, UnsupportedModelError, check_pixel_values, register
from trimformer.engine.view import BlockView

_VIT_MODULE = "timm.models.vision_transformer"


class FusedQKVPart(nn.Module):
    """One of query / key / value of a fused ``qkv`` Linear [3D, D], as a Linear-like view (no copy)."""

    def __init__(self, qkv: nn.Linear, part: int) -> None:
        super().__init__()
        self.qkv = qkv
        self.part = part
        self.in_features = qkv.in_features
        self.out_features = qkv.out_features // 3
        self.train(qkv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, N, D]
        rows = slice(self.part * self.out_features, (self.part + 1) * self.out_features)
        bias = None if self.qkv.bias is None else self.qkv.bias[rows]
        return F.linear(x, self.qkv.weight[rows], bias)


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


class TimmViTAdapter(Adapter):
    name = "timm_vit"

    def supports(self, model: nn.Module) -> bool:
        vit = sys.modules.get(_VIT_MODULE)
        return vit is not None and isinstance(model, vit.VisionTransformer)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return int(model.num_prefix_tokens)

    def validate(self, model: nn.Module) -> None:
        vit = sys.modules[_VIT_MODULE]
        kind = type(model).__name__
        if getattr(model, "num_reg_tokens", 0):
            raise UnsupportedModelError(f"timm {kind}: register tokens are not supported")
        if not getattr(model, "has_class_token", True) or model.cls_token is None:
            raise UnsupportedModelError(f"timm {kind}: a class token is required (it is never pruned)")
        if model.global_pool not in ("token", "avg"):
            raise UnsupportedModelError(f"timm {kind}: global_pool={model.global_pool!r} is not supported "
                                        "(use 'token' or 'avg')")
        for i, block in enumerate(model.blocks):
            if type(block) is not vit.Block:
                raise UnsupportedModelError(f"timm {kind}: block {i} is a {type(block).__name__}; only the "
                                            "plain pre-norm Block is supported")
            attn, mlp = block.attn, block.mlp
            if not (_is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))):
                raise UnsupportedModelError(f"timm {kind}: qk-norm (qk_norm=True) is not supported")
            if not _is_identity(getattr(attn, "norm", None)) or not _is_identity(getattr(mlp, "norm", None)):
                raise UnsupportedModelError(f"timm {kind}: scale_attn_norm / scale_mlp_norm are not supported")
            if float(getattr(getattr(mlp, "drop1", None), "p", 0.0)) > 0:
                raise UnsupportedModelError(f"timm {kind}: dropout inside the MLP (proj_drop > 0) is not supported")

    def blocks(self, model: nn.Module) -> list[BlockView]:
        views = []
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            views.append(BlockView(
                query=FusedQKVPart(attn.qkv, 0), key=FusedQKVPart(attn.qkv, 1), value=FusedQKVPart(attn.qkv, 2),
                attn_out=attn.proj, mlp_in=mlp.fc1, mlp_out=mlp.fc2, activation=mlp.act,
                norm_attn=block.norm1, norm_mlp=block.norm2, num_heads=attn.num_heads, pre_norm=True,
                attn_dropout=attn.attn_drop, attn_out_dropout=attn.proj_drop, hidden_dropout=mlp.drop2,
                layer_scale_attn=block.ls1, layer_scale_mlp=block.ls2, residual_drop=block.drop_path1,
            ))
        return views

    def check_inputs(self, inputs: dict[str, torch.Tensor | None]) -> None:
        check_pixel_values(inputs)

    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = inputs["pixel_values"]
        try:
            x = model.patch_embed(pixels)  # [B, P, D] (timm checks the image size)
        except AssertionError as err:
            raise ValueError(f"{err} (resize the images to the model's img_size)") from err
        x = model.norm_pre(model.patch_drop(model._pos_embed(x)))  # [B, N, D], prefix tokens first
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)

    def head(self, model: nn.Module, hidden: torch.Tensor, alive: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = model.norm(hidden)  # [B, M, D]
        if model.global_pool == "avg":  # mean of the live patch tokens
            prefix = int(model.num_prefix_tokens)
            weights = alive[:, prefix:, None].to(hidden.dtype)  # [B, M - prefix, 1]
            pooled = (hidden[:, prefix:] * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        else:
            pooled = hidden[:, 0]
        return {"logits": model.head(model.head_drop(model.fc_norm(pooled)))}


register(TimmViTAdapter())
