"""Fold eval-mode batch norm into the conv / linear layer that feeds it.

Approach: the model is traced with ``torch.fx.symbolic_trace`` (on a throwaway GraphModule; the user's
module tree is edited in place). A BatchNorm call is folded when its only input is the output of a Conv
(1d/2d/3d, any groups, incl. depthwise) or Linear call, that output has no other user, and neither module
is called anywhere else in the graph. Then W' = W * g, b' = (b - mean) * g + beta with
g = gamma / sqrt(running_var + eps) per output channel, and the BatchNorm is replaced by nn.Identity.
Batch norms in training mode are refused (ValueError). Models that fx cannot trace (data-dependent
control flow) raise ValueError; fold their traceable sub-modules instead. Folding uses running
statistics, so it is exact only for eval-mode inference.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(producer name, batch-norm name) pairs that can be folded, found from the fx graph."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        name = type(model).__name__
        raise ValueError(f"cannot trace {name} with torch.fx ({exc}); fold a traceable sub-module") from exc
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _BN):
            continue
        if model.get_submodule(node.target).running_mean is None:  # no running stats: nothing to fold
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        if prev.op != "call_module" or not isinstance(model.get_submodule(prev.target), _FOLDABLE):
            continue
        if len(prev.users) != 1 or calls[prev.target] != 1 or calls[node.target] != 1:
            continue
        pairs.append((prev.target, node.target))
    return pairs


@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (running stats) into ``layer``'s weight and bias, in place."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("batch norm without running statistics cannot be folded")
    out = layer.weight.shape[0]
    if bn.num_features != out:
        raise ValueError(f"batch norm has {bn.num_features} features but the layer has {out} outputs")
    w = layer.weight
    g = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        g = g * bn.weight.double()
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(g)
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(g)
    new_w = w.double() * g.reshape(-1, *([1] * (w.ndim - 1)))
    new_b = (b - bn.running_mean.double()) * g + beta
    layer.weight.copy_(new_w.to(w.dtype))
    layer.folded_bn_weight = (bn.weight.detach().clone() if bn.weight is not None
                              else torch.ones(out, dtype=w.dtype))  # RAPQ's block loss norm reads it
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b.to(w.dtype))
    else:
        layer.bias.copy_(new_b.to(layer.bias.dtype))


def fold_batchnorm_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every foldable (layer, batch norm) pair of ``model`` in place; returns the folded pairs."""
    pairs = find_conv_bn_pairs(model)
    training = [bn for _, bn in pairs if model.get_submodule(bn).training]
    if training:
        raise ValueError(f"batch norm {training[0]!r} is in training mode; call model.eval() before folding")
    for layer_name, bn_name in pairs:
        fold_bn_into(model.get_submodule(layer_name), model.get_submodule(bn_name))
        parent_name, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, nn.Identity())
    return pairs
