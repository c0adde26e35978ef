"""TokenPrunedModel: a transformers model run layer by layer with token pruning."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.adapters import adapter_for
from trimformer.blocks import run_block
from trimformer.core.flops import dense_encoder_flops, encoder_flops
from trimformer.core.merging import proportional_attention_bias
from trimformer.core.packing import plan_row_groups, unpack
from trimformer.policy import PruningPolicy

EXECUTION_MODES = ("packed", "masked")


@dataclass
class PrunedOutput:
    """What a forward returns; every forward builds its own (no state kept between calls)."""

    logits: torch.Tensor | None  # [B, C] for classification models
    loss: torch.Tensor | None
    n_in: torch.Tensor  # [B, L] live tokens entering each layer (expected counts in the soft stage)
    n_out: torch.Tensor  # [B, L] tokens kept after each layer's decision
    lengths: torch.Tensor  # [B] real tokens of each input
    hidden_size: int
    mlp_size: int
    last_hidden_state: torch.Tensor | None = None  # [B, N, D] base models: back at original positions
    pooler_output: torch.Tensor | None = None
    n_rows: torch.Tensor | None = None  # [B, L] query rows with an attention output (n_in where tokens merge)
    token_sizes: torch.Tensor | None = None  # [B, M] original tokens behind each final slot (merging only)
    extra_macs: torch.Tensor | None = None  # [B, L] MACs of merge decisions (ToMe's similarities; 0 elsewhere)

    # FLOPs are computed on first use only: a dozen small operations that a batch-1 forward need not pay for.
    @cached_property
    def flops(self) -> torch.Tensor:
        """[B] encoder FLOPs per sample at these counts (differentiable in the soft stage)."""
        return encoder_flops(self.hidden_size, self.mlp_size, self.n_in, self.n_out, self.n_rows, self.extra_macs)

    @cached_property
    def dense_flops(self) -> torch.Tensor:
        """[B] encoder FLOPs of the unpruned model on the real length."""
        return dense_encoder_flops(self.hidden_size, self.mlp_size, self.n_in.shape[1], self.lengths).to(
            self.n_in.dtype)

    @property
    def flops_ratio(self) -> torch.Tensor:
        """Batch FLOPs over dense FLOPs (a scalar, differentiable in the soft stage)."""
        return self.flops.sum() / self.dense_flops.sum()


class TokenPrunedModel(nn.Module):
    """Wraps a supported transformers model; its weights are shared, not copied.

    ``mode='packed'`` removes pruned tokens (inference speed); ``'masked'`` keeps the sequence length and
    masks pruned tokens out (training, and the official LTP behaviour). ``policy=None`` or
    :meth:`pruning_disabled` runs the original computation. Merging policies (ToMe, EViT) run on the
    same loop; a base model's ``last_hidden_state`` then holds each merged token at the position of the
    token that absorbed the others (zeros where tokens were merged away).
    ``regroup`` (packed inference on a CPU only, default True): when the rows of a batch keep very different
    numbers of tokens, run them as groups of similar counts so that padding to the longest row costs less; the
    per-row results are the same (up to float rounding). On a GPU, where padding is cheap and each extra step
    costs, batches run in one piece.
    """

    def __init__(self, model: nn.Module, policy: PruningPolicy | None = None, mode: str = "packed"):
        super().__init__()
        self.adapter = adapter_for(model)
        self.model = model
        self.policy = policy
        self.mode = mode
        self.pruning_enabled = True
        self.regroup = True

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in EXECUTION_MODES:
            raise ValueError(f"execution mode must be one of {EXECUTION_MODES}, got {value!r}")
        self._mode = value

    @property
    def num_layers(self) -> int:
        return len(self.adapter.views(self.model))

    @contextmanager
    def pruning_disabled(self) -> Iterator[TokenPrunedModel]:
        previous, self.pruning_enabled = self.pruning_enabled, False
        try:
            yield self
        finally:
            self.pruning_enabled = previous

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> PrunedOutput:
        device = next(self.model.parameters()).device  # inputs follow the model (CPU batches, GPU model)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                  "pixel_values": pixel_values}
        inputs = {k: v.to(device) if v is not None else None for k, v in inputs.items()}
        self.adapter.check_inputs(inputs)
        x, alive = self.adapter.embed(self.model, inputs)  # [B, N, D], bool [B, N]
        lengths = alive.sum(dim=1)  # [B] real tokens
        batch, length, _ = x.shape
        positions = torch.arange(length, device=x.device).expand(batch, -1)
        use_policy = self.policy is not None and self.pruning_enabled
        blocks = self.adapter.views(self.model)
        # Regrouping and row-chunked attention split batches: not under gradients, nor for a capture, which
        # records whole batches.
        inference = not torch.is_grad_enabled() and not getattr(self.policy, "capturing", False)
        on_cpu = x.device.type == "cpu"
        run = _BlockRun(
            blocks=blocks, length=length, packed=self.mode == "packed",
            decider=self.policy.decider if use_policy else None,
            merger=getattr(self.policy, "merger", None) if use_policy else None,
            proportional=use_policy and bool(getattr(self.policy, "proportional_attention", False)),
            num_prefix=self.adapter.num_prefix_tokens(self.model),
            head=lambda hidden, live: self.adapter.head(self.model, hidden, live),
            # Regrouping trades padding for more, smaller steps: a gain on a CPU, a loss on a GPU (measured on an
            # H100: 0.76x against 1.13x of dense at batch 256 for SaiT's input-adaptive policy).
            regroup=inference and self.regroup and self.mode == "packed" and on_cpu,
            chunked=inference and on_cpu,  # a CPU-cache measure; on a GPU, one kernel per step
            # Padding is cheap on a GPU, where each extra step costs instead; masked execution stays as it is.
            compact=inference and on_cpu and self.mode == "packed",
        )
        out = run.blocks_from(0, _Rows(x, alive, positions, None, None, lengths.to(x.dtype), None))
        n_in_t, n_out_t, n_rows_t, extra_t = (torch.stack(out.records[k], dim=1) for k in _RECORDS)  # [B, L]
        logits = out.head.get("logits")
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None and logits is not None else None
        return PrunedOutput(
            logits=logits, loss=loss, n_in=n_in_t, n_out=n_out_t, lengths=lengths,
            hidden_size=blocks[0].hidden_size, mlp_size=blocks[0].mlp_size,
            last_hidden_state=out.head.get("last_hidden_state"), pooler_output=out.head.get("pooler_output"),
            n_rows=n_rows_t, token_sizes=out.sizes, extra_macs=extra_t,
        )


_RECORDS = ("n_in", "n_out", "n_rows", "extra")


@dataclass
class _Rows:
    """Some rows of a batch between two blocks."""

    x: torch.Tensor  # [b, M, D]
    alive: torch.Tensor  # bool [b, M]
    positions: torch.Tensor  # long [b, M]: original position of each slot
    soft_keep: torch.Tensor | None  # [b, M] (soft stage)
    sizes: torch.Tensor | None  # [b, M] original tokens behind each slot (after a merge)
    n_live: torch.Tensor | None  # [b] live tokens, when known
    all_live: bool | None

    def select(self, rows: torch.Tensor, width: int) -> _Rows:
        """Rows ``rows`` (long [g]) of a packed batch, cut to ``width`` slots (live tokens come first)."""
        return _Rows(self.x[rows, :width], self.alive[rows, :width], self.positions[rows, :width], None,
                     None if self.sizes is None else self.sizes[rows, :width],
                     None if self.n_live is None else self.n_live[rows], None)


@dataclass
class _Outcome:
    """Per-row results of running blocks ``first..L-1`` and the head on some rows."""

    records: dict[str, list[torch.Tensor]]  # per layer from ``first``: [b] each
    head: dict[str, torch.Tensor]  # logits [b, C] / last_hidden_state [b, N, D] (original positions) / pooler
    sizes: torch.Tensor | None  # [b, M] token sizes of the final slots (merging only)


@dataclass
class _BlockRun:
    """The block loop of one forward. With ``regroup``, a packed batch whose rows keep very different numbers of
    tokens is split into groups of similar counts (:func:`plan_row_groups`) that run the remaining blocks
    separately, each padded only to its own longest row; results are put back in the original row order."""

    blocks: list
    length: int
    packed: bool
    decider: Callable[[int, int], object] | None
    merger: Callable[[int, int], object] | None
    proportional: bool
    num_prefix: int
    head: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
    regroup: bool
    chunked: bool = False  # deciding blocks may run their attention in row chunks (inference)
    compact: bool = False  # blocks run their per-token half on live slots only where padding is large

    def blocks_from(self, first: int, rows: _Rows) -> _Outcome:
        records: dict[str, list[torch.Tensor]] = {k: [] for k in _RECORDS}
        no_extra = None  # zeros [b]: the extra MACs of every block that does not merge (one tensor for all)
        for i in range(first, len(self.blocks)):
            decide = self.decider(i, self.num_prefix) if self.decider is not None else None
            merge = self.merger(i, self.num_prefix) if self.merger is not None else None
            sizes = rows.sizes
            bias = proportional_attention_bias(sizes, rows.alive) if self.proportional and sizes is not None else None
            step = run_block(self.blocks[i], rows.x, rows.alive, rows.positions, decide, self.packed, rows.soft_keep,
                             merge=merge, sizes=sizes, attn_bias=bias, n_live=rows.n_live, all_live=rows.all_live,
                             chunked=self.chunked, compact=self.compact)
            # What the next block can reuse about its live tokens (soft counts are expectations, not counts).
            rows = _Rows(step.hidden, step.alive, step.positions, step.soft_keep, step.sizes,
                         step.n_out if step.soft_keep is None else None, step.all_live)
            records["n_in"].append(step.n_in)
            records["n_out"].append(step.n_out)
            records["n_rows"].append(step.n_out if step.n_rows is None else step.n_rows)
            if step.extra_macs is None and no_extra is None:
                no_extra = torch.zeros_like(step.n_in)
            records["extra"].append(no_extra if step.extra_macs is None else step.extra_macs)
            reduced = decide is not None or merge is not None
            # A split pays for itself over several blocks: not with a single block left.
            if self.regroup and reduced and i + 2 < len(self.blocks) and rows.x.shape[0] > 1:
                counts = [int(c) for c in step.n_out.tolist()]
                groups = plan_row_groups(counts)
                if len(groups) > 1:
                    return self._split(i + 1, rows, counts, groups, records)
        head = self.head(rows.x, rows.alive)
        hidden = head.get("last_hidden_state")
        if hidden is not None and hidden.shape[1] != self.length:
            head = {**head, "last_hidden_state": unpack(hidden, rows.positions, rows.alive, self.length)}
        return _Outcome(records, head, rows.sizes)

    def _split(self, first: int, rows: _Rows, counts: list[int], groups: list[list[int]],
               records: dict[str, list[torch.Tensor]]) -> _Outcome:
        """Run blocks ``first..`` on each group of rows, then reassemble the batch in its original order."""
        device = rows.x.device
        parts = []
        for group in groups:
            width = max(counts[r] for r in group)
            parts.append(self.blocks_from(first, rows.select(torch.tensor(group, device=device), width)))
        order = torch.argsort(torch.tensor([r for g in groups for r in g], device=device))  # back to row order

        def join(tensors: list[torch.Tensor]) -> torch.Tensor:
            width = max(t.shape[1] for t in tensors) if tensors[0].dim() > 1 else 0
            if width:
                tensors = [F.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1])) for t in tensors]
            return torch.cat(tensors)[order]

        for key in _RECORDS:
            records[key] += [join([p.records[key][j] for p in parts]) for j in range(len(parts[0].records[key]))]
        head = {k: join([p.head[k] for p in parts]) for k, v in parts[0].head.items() if v is not None}
        sizes = None if parts[0].sizes is None else join([p.sizes for p in parts])
        return _Outcome(records, head, sizes)
