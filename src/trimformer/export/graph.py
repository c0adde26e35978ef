"""The module that is traced into an ONNX graph: a pruned model in traceable execution, with tensor-only outputs.

:class:`ExportGraph` runs the model's own forward (the engine's block step, the policy's decisions) with
``ExecutionOptions(traceable=True, mode='packed')``: the pruning decision is computed in the graph and pruned tokens
are removed (top-k with a computed k, gathers), so the sequence length shrinks inside the graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from trimformer.pruned import TokenPrunedModel

TEXT_INPUTS = ("input_ids", "attention_mask")
VISION_INPUTS = ("pixel_values",)
KEPT_OUTPUT = "kept_tokens"  # int64 [B, L]: tokens each block keeps after its decision (the engine's n_out)


@dataclass(frozen=True)
class GraphSignature:
    """Names of a graph's inputs and outputs and which of their axes are dynamic."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


def signature(model: TokenPrunedModel) -> GraphSignature:
    """Text: input_ids, attention_mask [batch, sequence]; vision: pixel_values [batch, 3, H, W] (H, W fixed).
    Outputs: logits [batch, classes] (last_hidden_state for a bare encoder) and kept_tokens [batch, blocks]."""
    first = "logits" if _has_head(model) else "last_hidden_state"
    if model.adapter.task == "text":
        inputs = TEXT_INPUTS
        axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    else:
        inputs = VISION_INPUTS
        axes = {"pixel_values": {0: "batch"}}
    axes[first] = {0: "batch"} if first == "logits" else {0: "batch", 1: "sequence"}
    axes[KEPT_OUTPUT] = {0: "batch"}
    return GraphSignature(inputs, (first, KEPT_OUTPUT), axes)


def _has_head(model: TokenPrunedModel) -> bool:
    return hasattr(model.model, "classifier") or hasattr(model.model, "cls_classifier")


class ExportGraph(nn.Module):
    """``forward(*inputs) -> (logits or last_hidden_state, kept_tokens)`` of a pruned model, traceable."""

    def __init__(self, model: TokenPrunedModel):
        super().__init__()
        self.pruned = model
        self.sig = signature(model)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.pruned.options(traceable=True, mode="packed"):
            out = self.pruned(**dict(zip(self.sig.inputs, inputs, strict=True)))
        main = out.logits if out.logits is not None else out.last_hidden_state
        return main, out.n_out.round().to(torch.long)  # [B, C], [B, L]


def float_copy(model: TokenPrunedModel) -> TokenPrunedModel:
    """``model`` itself, or for a quantized one (PWLQ, uniform) a copy whose fake-quant layers are plain float layers
    on the dequantized weights (activation quantizers dropped: ONNX Runtime quantizes activations itself)."""
    from trimformer.quant.modules import QuantConv2d, QuantLinear

    if not any(isinstance(m, (QuantLinear, QuantConv2d)) for m in model.modules()):
        return model
    copied = copy.deepcopy(model)
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            elif isinstance(child, QuantConv2d):
                plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                  padding=child.padding, dilation=child.dilation, groups=child.groups,
                                  bias=child.bias is not None, padding_mode=child.padding_mode)
            else:
                continue
            plain.weight = nn.Parameter(child.weight.detach().clone(), requires_grad=False)
            if child.bias is not None:
                plain.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            setattr(parent, name, plain)
    copied.rebuild_views()
    return copied.eval()


def example_inputs(model: TokenPrunedModel, batch: int = 2, length: int = 16,
                   resolution: int | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: two rows (never one: a batch-1 trace would keep batch-1 shortcuts), the second padded."""
    if batch < 2:
        raise ValueError("trace with a batch of at least 2 rows (a batch-1 trace keeps batch-1 shortcuts)")
    if model.adapter.task == "text":
        vocab = int(getattr(model.model.config, "vocab_size", 100))
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, min(vocab, 1000), (batch, length), generator=g)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[1:, length // 2:] = 0
        return ids * mask, mask
    size = resolution or int(model.model.config.image_size)
    channels = int(getattr(model.model.config, "num_channels", 3))
    return (torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0)),)
