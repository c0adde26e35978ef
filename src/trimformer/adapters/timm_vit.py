"""Adapter for timm's ``VisionTransformer`` (optional: ``pip install trimformer[timm]``).

timm is never imported here: a model can only be a timm ``VisionTransformer`` if the user already imported
timm, so :meth:`TimmViTAdapter.supports` looks the class up in ``sys.modules``. The block views hand the
engine the fused ``qkv`` projection itself (``BlockView.qkv``: one matmul, at inference on a cached weight with
pre-scaled query rows, packed for oneDNN where that applies), with three weight-slice views of it as the
per-projection ``query`` / ``key`` / ``value``.

:meth:`TimmViTAdapter.validate` is an allow-list, checked against timm 1.0.31's ``vision_transformer.py``,
``layers/attention.py`` and ``layers/mlp.py``: it accepts only what the engine computes exactly and refuses
everything else, naming the feature. Accepted: ``VisionTransformer`` itself (not a subclass) with a class token
and no register tokens, ``global_pool`` 'token' or 'avg' (patch tokens only); the plain pre-norm ``Block`` with
the standard ``Attention`` (one fused ``qkv`` Linear, ``num_heads * head_dim == dim``, no qk-norm, no output
norm, no gate), the plain ``Mlp`` (two Linears, an elementwise activation of the GELU / ReLU / SiLU family, no
hidden norm, no dropout between the Linears), LayerNorm, ``LayerScale`` or Identity, ``DropPath`` or Identity.
Refused, for example: ``attn_layer='diff'`` (DiffAttention), gated attention, ``attn_head_dim`` other than
``dim // num_heads``, qk-norm, ``scale_attn_norm`` / ``scale_mlp_norm``, SwiGLU / GLU MLPs, RMSNorm, other block
types, register tokens, attention pooling ('map', 'prr'), 'max' / 'avgmax' pooling, ``pool_include_prefix``.
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
    """One of query / key / value of a fused ``qkv`` Linear [3D, D], as a Linear-like view (no copy).

    The engine runs ``qkv`` itself (``BlockView.qkv``); these views serve code that reads one projection. They
    read the weight directly, so a quantized ``qkv``'s input quantizer is not applied through them.
    """

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


def _timm_classes(module: str, *names: str) -> tuple[type, ...]:
    """The classes ``names`` of the already imported timm module ``module`` that exist in this timm version."""
    found = sys.modules.get(module)
    return tuple(getattr(found, name) for name in names if isinstance(getattr(found, name, None), type))


# What the engine computes exactly, as module types (exact type matches: a subclass may change forward).
_SUPPORTED = ("trimformer supports timm's VisionTransformer with a class token and global_pool 'token' or 'avg', "
              "built from the plain pre-norm Block: the standard Attention (fused qkv Linear, num_heads * head_dim "
              "== dim, no qk-norm, no attention norm, no gate), the plain Mlp (GELU / ReLU / SiLU family, no MLP norm, "
              "no dropout inside), LayerNorm, LayerScale or Identity, DropPath or Identity")
_BLOCK_CHILDREN = {"norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"}
_ATTN_CHILDREN = {"qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop"}
_MLP_CHILDREN = {"fc1", "act", "drop1", "norm", "fc2", "drop2"}


def _activations() -> tuple[type, ...]:
    """Elementwise activations (the engine calls the module itself, so any elementwise one is exact)."""
    return (nn.GELU, nn.ReLU, nn.SiLU) + _timm_classes("timm.layers.activations", "GELU", "GELUTanh", "QuickGELU",
                                                       "Swish")


def _layer_norms() -> tuple[type, ...]:
    return (nn.LayerNorm,) + _timm_classes("timm.layers.norm", "LayerNorm")


class _Refusal:
    """Builds the :class:`UnsupportedModelError` for one model: names the feature, then what is supported."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, feature: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"timm {self.kind}: {feature} is not supported; {_SUPPORTED}")


def _check_layer_norm(refuse: _Refusal, where: str, norm: nn.Module, dim: int, identity_ok: bool) -> None:
    if identity_ok and isinstance(norm, nn.Identity):
        return
    if type(norm) not in _layer_norms():
        raise refuse(f"{where} is a {type(norm).__name__} (only LayerNorm{' or Identity' if identity_ok else ''})")
    if tuple(norm.normalized_shape) != (dim,):
        raise refuse(f"{where} normalises over {tuple(norm.normalized_shape)} instead of ({dim},)")


def _check_dropout(refuse: _Refusal, where: str, drop: nn.Module, allow_p: bool = True) -> None:
    if type(drop) is not nn.Dropout:
        raise refuse(f"{where} is a {type(drop).__name__} (only nn.Dropout)")
    if not allow_p and drop.p > 0:
        raise refuse(f"{where} with p > 0 (proj_drop_rate > 0: dropout inside the MLP)")


def _check_linear(refuse: _Refusal, where: str, linear: nn.Module, n_in: int, n_out: int) -> None:
    if type(linear) is not nn.Linear:
        raise refuse(f"{where} is a {type(linear).__name__} (only nn.Linear)")
    if (linear.in_features, linear.out_features) != (n_in, n_out):
        raise refuse(f"{where} maps {linear.in_features} -> {linear.out_features} features "
                     f"(expected {n_in} -> {n_out})")


def _check_attention(refuse: _Refusal, i: int, attn: nn.Module, dim: int) -> None:
    standard = _timm_classes("timm.layers.attention", "Attention") or _timm_classes(_VIT_MODULE, "Attention")
    if type(attn) not in standard:
        name = type(attn).__name__
        hint = "attn_layer='diff'; " if name == "DiffAttention" else ""
        raise refuse(f"block {i}'s attention {name} ({hint}only timm's standard Attention)")
    if getattr(attn, "gate", None) is not None:
        raise refuse(f"gated attention (block {i}: Attention(gated=True), a sigmoid gate on the attention output)")
    heads = int(attn.num_heads)
    head_dim = int(getattr(attn, "head_dim", dim // heads))
    if heads * head_dim != dim:
        raise refuse(f"attn_head_dim={head_dim} with {heads} heads in block {i} (num_heads * head_dim = "
                     f"{heads * head_dim}, not the width {dim})")
    if abs(float(attn.scale) - head_dim ** -0.5) > 1e-12 * head_dim ** -0.5:
        raise refuse(f"an attention scale of {attn.scale} in block {i} (only 1/sqrt(head_dim))")
    if not (_is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))):
        raise refuse(f"qk-norm (qk_norm=True, block {i})")
    if not _is_identity(getattr(attn, "norm", None)):
        raise refuse(f"a norm on the attention output (scale_attn_norm=True, block {i})")
    _check_linear(refuse, f"block {i}'s fused qkv projection", attn.qkv, dim, 3 * dim)
    _check_linear(refuse, f"block {i}'s attention output projection", attn.proj, dim, dim)
    _check_dropout(refuse, f"block {i}'s attention dropout", attn.attn_drop)
    _check_dropout(refuse, f"block {i}'s attention output dropout", attn.proj_drop)
    extra = sorted({name for name, _ in attn.named_children()} - _ATTN_CHILDREN)
    if extra:
        raise refuse(f"attention sub-modules {extra} in block {i}")


def _check_mlp(refuse: _Refusal, i: int, mlp: nn.Module, dim: int) -> None:
    plain = _timm_classes("timm.layers.mlp", "Mlp") or _timm_classes(_VIT_MODULE, "Mlp")
    if type(mlp) not in plain:
        raise refuse(f"block {i}'s MLP {type(mlp).__name__} (mlp_layer; only timm's plain Mlp)")
    if not _is_identity(getattr(mlp, "norm", None)):
        raise refuse(f"a norm inside the MLP (scale_mlp_norm=True, block {i})")
    if type(mlp.act) not in _activations():
        raise refuse(f"the activation {type(mlp.act).__name__} in block {i} (act_layer; only "
                     + ", ".join(sorted({cls.__name__ for cls in _activations()})) + ")")
    hidden = mlp.fc1.out_features if isinstance(mlp.fc1, nn.Linear) else -1
    _check_linear(refuse, f"block {i}'s MLP input Linear (fc1)", mlp.fc1, dim, hidden)
    _check_linear(refuse, f"block {i}'s MLP output Linear (fc2)", mlp.fc2, hidden, dim)
    _check_dropout(refuse, f"block {i}'s dropout inside the MLP (drop1)", mlp.drop1, allow_p=False)
    _check_dropout(refuse, f"block {i}'s MLP output dropout (drop2)", mlp.drop2)
    extra = sorted({name for name, _ in mlp.named_children()} - _MLP_CHILDREN)
    if extra:
        raise refuse(f"MLP sub-modules {extra} in block {i}")


def _check_block(refuse: _Refusal, vit, i: int, block: nn.Module, dim: int) -> None:
    if type(block) is not vit.Block:
        raise refuse(f"block {i} of type {type(block).__name__} (block_fn; only the plain pre-norm Block)")
    extra = sorted({name for name, _ in block.named_children()} - _BLOCK_CHILDREN)
    if extra:
        raise refuse(f"block sub-modules {extra} in block {i}")
    _check_layer_norm(refuse, f"block {i}'s norm1", block.norm1, dim, identity_ok=False)
    _check_layer_norm(refuse, f"block {i}'s norm2", block.norm2, dim, identity_ok=False)
    _check_attention(refuse, i, block.attn, dim)
    _check_mlp(refuse, i, block.mlp, dim)
    layer_scale = _timm_classes(_VIT_MODULE, "LayerScale") + _timm_classes("timm.layers.layer_scale", "LayerScale")
    for name in ("ls1", "ls2"):
        ls = getattr(block, name)
        if not isinstance(ls, nn.Identity) and type(ls) not in layer_scale:
            raise refuse(f"block {i}'s {name} of type {type(ls).__name__} (only LayerScale or Identity)")
        if type(ls) in layer_scale and tuple(ls.gamma.shape) != (dim,):
            raise refuse(f"block {i}'s {name} with a gamma of shape {tuple(ls.gamma.shape)}")
    drop_path = _timm_classes("timm.layers.drop", "DropPath") + _timm_classes(_VIT_MODULE, "DropPath")
    dp1, dp2 = block.drop_path1, block.drop_path2
    for name, dp in (("drop_path1", dp1), ("drop_path2", dp2)):
        if not isinstance(dp, nn.Identity) and type(dp) not in drop_path:
            raise refuse(f"block {i}'s {name} of type {type(dp).__name__} (only DropPath or Identity)")
    # the engine applies one stochastic-depth module to both residual branches
    if (type(dp1), getattr(dp1, "drop_prob", 0.0), getattr(dp1, "scale_by_keep", True)) != (
            type(dp2), getattr(dp2, "drop_prob", 0.0), getattr(dp2, "scale_by_keep", True)):
        raise refuse(f"different stochastic depth on the two residual branches of block {i}")


class TimmViTAdapter(Adapter):
    name = "timm_vit"
    task = "vision"

    def supports(self, model: nn.Module) -> bool:
        vit = sys.modules.get(_VIT_MODULE)
        return vit is not None and isinstance(model, vit.VisionTransformer)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return int(model.num_prefix_tokens)

    def validate(self, model: nn.Module) -> None:
        vit = sys.modules[_VIT_MODULE]
        refuse = _Refusal(type(model).__name__)
        if type(model) is not vit.VisionTransformer:
            raise refuse(f"the VisionTransformer subclass {type(model).__name__} (it may change the embedding, "
                         "tokens or head)")
        if getattr(model, "num_reg_tokens", 0) or getattr(model, "reg_token", None) is not None:
            raise refuse("register tokens (reg_tokens > 0)")
        if not getattr(model, "has_class_token", True) or model.cls_token is None:
            raise refuse("a model without a class token (it is the one token never pruned)")
        if int(model.num_prefix_tokens) != 1:
            raise refuse(f"{model.num_prefix_tokens} prefix tokens (only the class token)")
        if model.global_pool not in ("token", "avg") or getattr(model, "attn_pool", None) is not None:
            raise refuse(f"global_pool={model.global_pool!r} (only 'token' or 'avg')")
        if model.global_pool == "avg" and getattr(model, "pool_include_prefix", False):
            raise refuse("pool_include_prefix=True (the 'avg' pool averages the patch tokens only)")
        dim = int(model.embed_dim)
        for name in ("norm_pre", "norm", "fc_norm"):
            _check_layer_norm(refuse, f"the model's {name}", getattr(model, name), dim, identity_ok=True)
        if not isinstance(model.blocks, nn.Sequential) or len(model.blocks) == 0:
            raise refuse("blocks that are not a non-empty nn.Sequential")
        for i, block in enumerate(model.blocks):
            _check_block(refuse, vit, i, block, dim)

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
                qkv=attn.qkv,
            ))
        return views

    def check_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]) -> None:
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
