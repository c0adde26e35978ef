"""The one place that touches PyTorch's private oneDNN linear (``torch.ops.mkldnn``), behind a guard.

``AVAILABLE`` says whether this build has the prepacked linear; where it does not (or a future PyTorch removes
it), every caller falls back to ``F.linear`` (see :class:`trimformer.engine.linears.Linears`).
"""

from __future__ import annotations

import torch


def _probe() -> bool:
    try:
        ops = torch.ops.mkldnn
        return bool(torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
                    and hasattr(ops, "_reorder_linear_weight"))
    except (AttributeError, RuntimeError):
        return False


AVAILABLE: bool = _probe()  # a fact about this PyTorch build, fixed at import


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] reordered into oneDNN's own layout (done once per weight, then cached)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's linear on a weight from :func:`pack_weight`: [..., in] -> [..., out]."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")
