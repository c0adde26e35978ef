"""TokenPrunedModel: a transformers model run layer by layer with token pruning."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.adapters import adapter_for
from trimformer.blocks import run_block
from trimformer.core.flops import dense_encoder_flops, encoder_flops
from trimformer.core.merging import proportional_attention_bias
from trimformer.core.packing import unpack
from trimformer.policy import PruningPolicy

EXECUTION_MODES = ("packed", "masked")


@dataclass
class PrunedOutput:
    """What a forward returns; every forward builds its own (no state kept between calls)."""

    logits: torch.Tensor | None  # [B, C] for classification models
    loss: torch.Tensor | None
    n_in: torch.Tensor  # [B, L] live tokens entering each layer (expected counts in the soft stage)
    n_out: torch.Tensor  # [B, L] tokens kept after each layer's decision
    flops: torch.Tensor  # [B] encoder FLOPs per sample at these counts
    dense_flops: torch.Tensor  # [B] encoder FLOPs of the unpruned model on the real length
    last_hidden_state: torch.Tensor | None = None  # [B, N, D] base models: back at original positions
    pooler_output: torch.Tensor | None = None
    n_rows: torch.Tensor | None = None  # [B, L] query rows with an attention output (n_in where tokens merge)
    token_sizes: torch.Tensor | None = None  # [B, M] original tokens behind each final slot (merging only)

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
    """

    def __init__(self, model: nn.Module, policy: PruningPolicy | None = None, mode: str = "packed"):
        super().__init__()
        self.adapter = adapter_for(model)
        self.model = model
        self.policy = policy
        self.mode = mode
        self.pruning_enabled = True

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
        return len(self.adapter.blocks(self.model))

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
        blocks = self.adapter.blocks(self.model)
        num_prefix = self.adapter.num_prefix_tokens(self.model)
        merger = getattr(self.policy, "merger", None) if use_policy else None
        proportional = use_policy and bool(getattr(self.policy, "proportional_attention", False))
        soft_keep, sizes, n_in, n_out, n_rows, extra = None, None, [], [], [], []
        n_live, all_live = lengths.to(x.dtype), None
        for i, block in enumerate(blocks):
            decide = self.policy.decider(i, num_prefix) if use_policy else None
            merge = merger(i, num_prefix) if merger is not None else None
            bias = proportional_attention_bias(sizes, alive) if proportional and sizes is not None else None
            step = run_block(block, x, alive, positions, decide, self.mode == "packed", soft_keep,
                             merge=merge, sizes=sizes, attn_bias=bias, n_live=n_live, all_live=all_live)
            # What the next block can reuse about its live tokens (soft counts are expectations, not counts).
            n_live = step.n_out if step.soft_keep is None else None
            all_live = step.all_live
            x, alive, positions, soft_keep = step.hidden, step.alive, step.positions, step.soft_keep
            sizes = step.sizes
            n_in.append(step.n_in)
            n_out.append(step.n_out)
            n_rows.append(step.n_out if step.n_rows is None else step.n_rows)
            extra.append(step.extra_macs)
        head = self.adapter.head(self.model, x, alive)
        n_in_t, n_out_t = torch.stack(n_in, dim=1), torch.stack(n_out, dim=1)  # [B, L]
        n_rows_t = torch.stack(n_rows, dim=1)  # [B, L]
        if all(e is None for e in extra):  # no merge decision cost anywhere
            extra_t = torch.zeros_like(n_in_t)
        else:
            costs = [torch.zeros_like(n) if e is None else e for e, n in zip(extra, n_in, strict=True)]
            extra_t = torch.stack(costs, dim=1)
        d, ffn = blocks[0].hidden_size, blocks[0].mlp_size
        logits = head.get("logits")
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None and logits is not None else None
        hidden = head.get("last_hidden_state")
        if hidden is not None and hidden.shape[1] != length:
            hidden = unpack(hidden, positions, alive, length)
        return PrunedOutput(
            logits=logits, loss=loss, n_in=n_in_t, n_out=n_out_t,
            flops=encoder_flops(d, ffn, n_in_t, n_out_t, n_rows_t, extra_t),
            dense_flops=dense_encoder_flops(d, ffn, len(blocks), lengths).to(n_in_t.dtype),
            last_hidden_state=hidden, pooler_output=head.get("pooler_output"),
            n_rows=n_rows_t, token_sizes=sizes,
        )
