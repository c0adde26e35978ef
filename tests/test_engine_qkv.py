"""The engine's query/key/value projection for a block with one fused qkv Linear (``BlockView.qkv``, timm's layout)
against three separate projections, without timm: caching, stamps, fallbacks and gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from trimformer.adapters.timm_vit import FusedQKVPart
from trimformer.engine import onednn
from trimformer.engine.attention import attn_dropout_p, scaled_qkv
from trimformer.engine.linears import Linears, WeightCache
from trimformer.engine.view import BlockView

D, HEADS = 64, 4


def _views(bias: bool = True, qkv: nn.Linear | None = None) -> tuple[BlockView, BlockView]:
    """(a view on a fused qkv Linear, a view on three separate Linears holding the same weights)."""
    torch.manual_seed(0)
    qkv = nn.Linear(D, 3 * D, bias=bias) if qkv is None else qkv
    separate = [nn.Linear(D, D, bias=bias) for _ in range(3)]
    with torch.no_grad():
        for part, lin in enumerate(separate):
            lin.weight.copy_(qkv.weight[part * D:(part + 1) * D])
            if bias:
                lin.bias.copy_(qkv.bias[part * D:(part + 1) * D])
    rest = dict(attn_out=nn.Linear(D, D), mlp_in=nn.Linear(D, 2 * D), mlp_out=nn.Linear(2 * D, D),
                activation=nn.GELU(), norm_attn=nn.LayerNorm(D), norm_mlp=nn.LayerNorm(D), num_heads=HEADS,
                pre_norm=True, attn_dropout=nn.Dropout(0.5))
    fused = BlockView(query=FusedQKVPart(qkv, 0), key=FusedQKVPart(qkv, 1), value=FusedQKVPart(qkv, 2), qkv=qkv,
                      **rest)
    return fused, BlockView(query=separate[0], key=separate[1], value=separate[2], **rest)


def _h(batch: int = 2, n: int = 9) -> torch.Tensor:
    return torch.randn(batch, n, D, generator=torch.Generator().manual_seed(1))


def _close(got, expected) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a.shape == (2, HEADS, 9, D // HEADS)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


KERNELS = ["torch"] + (["onednn"] if onednn.AVAILABLE else [])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_fused_equals_separate_and_caches_the_scaled_weight(kernel, bias):
    fused, separate = _views(bias)
    linears = Linears(kernel, WeightCache())
    h = _h()
    with torch.no_grad():
        expected = scaled_qkv(separate, h, Linears("torch", WeightCache()))
        _close(scaled_qkv(fused, h, linears), expected)
        _close(scaled_qkv(dataclasses.replace(fused, qkv=None), h, linears), expected)  # the slice views
    assert linears.cache.holds(fused.qkv, "qkv")
    assert linears.cache.holds(fused.qkv, "onednn") == (kernel == "onednn")
    with torch.enable_grad():
        _close(scaled_qkv(fused, h, linears), expected)


def test_in_place_weight_change_rebuilds_the_cached_copy():
    fused, separate = _views()
    linears, h = Linears("auto", WeightCache()), _h()
    with torch.no_grad():
        scaled_qkv(fused, h, linears)
        fused.qkv.weight[:D].mul_(3.0)  # the query rows
        fused.qkv.bias[2 * D:].add_(1.0)  # the value bias
        separate.query.weight.mul_(3.0)
        separate.value.bias.add_(1.0)
        _close(scaled_qkv(fused, h, linears), scaled_qkv(separate, h, Linears("torch", WeightCache())))


@pytest.mark.skipif(not onednn.AVAILABLE, reason="this PyTorch build has no oneDNN prepacked linear")
def test_packing_of_the_module_weight_is_not_taken_for_the_scaled_copy():
    """The module's own packing and the packing of its scaled copy share an owner and source tensors: the scaled
    copy's stamp is marked, so neither stands in for the other."""
    fused, separate = _views()
    linears, h = Linears("onednn", WeightCache()), _h()
    with torch.no_grad():
        torch.testing.assert_close(linears(fused.qkv, h), fused.qkv(h), rtol=1e-5, atol=1e-6)  # packs W itself
        _close(scaled_qkv(fused, h, linears), scaled_qkv(separate, h, Linears("torch", WeightCache())))
        torch.testing.assert_close(linears(fused.qkv, h), fused.qkv(h), rtol=1e-5, atol=1e-6)


class _Counting(nn.Linear):
    """A Linear subclass (as quantized layers are): the engine must call it, not read its weight."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(x)


def test_other_modules_and_inference_tensors_run_the_module():
    linears, h = Linears("auto", WeightCache()), _h()
    fused, separate = _views(qkv=_Counting(D, 3 * D))
    with torch.no_grad():
        _close(scaled_qkv(fused, h, linears), scaled_qkv(separate, h, linears))
    assert _Counting.calls == 1 and not linears.cache.holds(fused.qkv, "qkv")
    with torch.inference_mode():  # weights without a version counter: a change could not be told, so no cache
        fused, separate = _views()
        _close(scaled_qkv(fused, h, linears), scaled_qkv(separate, h, linears))
    assert not linears.cache.holds(fused.qkv, "qkv")


def test_gradients_reach_the_fused_weight_and_training_follows_it():
    fused, separate = _views()
    h = _h().requires_grad_()
    q, k, v = scaled_qkv(fused, h, Linears("auto", WeightCache()))
    (q.square().sum() + k.sum() + v.sum()).backward()
    assert fused.qkv.weight.grad is not None and fused.qkv.weight.grad.abs().sum() > 0
    q2, k2, v2 = scaled_qkv(separate, h, Linears("auto", WeightCache()))
    (q2.square().sum() + k2.sum() + v2.sum()).backward()
    torch.testing.assert_close(fused.qkv.weight.grad[:D], separate.query.weight.grad, rtol=1e-5, atol=1e-5)
    assert attn_dropout_p(fused) == 0.5  # fresh modules train; the fused projection decides
    fused.qkv.eval()
    assert not fused.training and attn_dropout_p(fused) == 0.0
