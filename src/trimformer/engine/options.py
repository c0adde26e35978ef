"""Execution options of a pruned model: one object on the model, resolved once per forward.

Nothing here is global: a :class:`ExecutionOptions` lives on each ``TokenPrunedModel`` (``model.execution``)
and is changed with ``model.set_options(...)`` or, for a block of code, ``with model.options(...):``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trimformer.engine import onednn

EXECUTION_MODES = ("packed", "masked")
LINEAR_KERNELS = ("auto", "onednn", "torch")


@dataclass(frozen=True)
class ExecutionOptions:
    """How a pruned model runs (none of these change which tokens are kept, only how the work is done).

    mode: ``'packed'`` removes pruned tokens (inference speed); ``'masked'`` keeps the sequence length and masks
        them out (training, and the official LTP behaviour).
    pruning: False runs the original computation (the dense baseline on the same engine).
    regroup: packed CPU inference only: rows that keep very different numbers of tokens run as groups of
        similar counts, so that padding to the longest row costs less (per-row results unchanged).
    attention_chunk_bytes: largest [b, H, N, N] probability block a deciding block materialises at once at CPU
        inference; bigger batches run their attention in row chunks that stay in cache (0: never chunk).
    compact_min_padding: packed CPU inference: where padding fills at least this share of a block's slots, the
        per-token half of the block (output projection, norms, MLP) runs on the live slots only (> 1: never).
    fused_attention: blocks that need no attention probabilities run ``F.scaled_dot_product_attention``;
        False computes every block explicitly (e.g. for ``torch.utils.flop_counter``, which does not see the
        fused CPU kernel).
    linear_kernel: inference linears on CPU float32: ``'auto'`` (oneDNN prepacked weights of at least 1 MiB),
        ``'onednn'`` (every weight) or ``'torch'`` (``F.linear``).
    """

    mode: str = "packed"
    pruning: bool = True
    regroup: bool = True
    attention_chunk_bytes: int = 2 << 20
    compact_min_padding: float = 0.1
    fused_attention: bool = True
    linear_kernel: str = "auto"
    traceable: bool = False

    def __post_init__(self) -> None:
        if self.mode not in EXECUTION_MODES:
            raise ValueError(f"execution mode must be one of {EXECUTION_MODES}, got {self.mode!r}")
        for name in ("pruning", "regroup", "fused_attention", "traceable"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.attention_chunk_bytes, bool) or not isinstance(self.attention_chunk_bytes, int) \
                or self.attention_chunk_bytes < 0:
            raise ValueError(f"attention_chunk_bytes must be an int >= 0 (0: never chunk), got "
                             f"{self.attention_chunk_bytes!r}")
        if not isinstance(self.compact_min_padding, (int, float)) or not self.compact_min_padding >= 0:
            raise ValueError(f"compact_min_padding must be a share >= 0 (above 1: never compact), got "
                             f"{self.compact_min_padding!r}")
        if self.linear_kernel not in LINEAR_KERNELS:
            raise ValueError(f"unknown linear kernel {self.linear_kernel!r}: choose one of {', '.join(LINEAR_KERNELS)}")
        if self.linear_kernel == "onednn" and not onednn.AVAILABLE:
            raise ValueError("this PyTorch build has no prepacked oneDNN linear; use linear kernel 'auto' or 'torch'")

    def replace(self, **changes: Any) -> ExecutionOptions:
        """A copy with ``changes`` applied (validated; unknown names are an error)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown execution option(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data, with the linear kernel that really runs (for benchmark records)."""
        return {**dataclasses.asdict(self), "effective_linear_kernel": self.effective_linear_kernel}

    @property
    def effective_linear_kernel(self) -> str:
        """What CPU inference linears run on: ``'torch'`` where oneDNN's prepacked linear is unavailable."""
        return "torch" if not onednn.AVAILABLE else self.linear_kernel
