"""The block loop of one forward, with regrouping (a CPU-only measure of packed inference).

With regrouping, a packed batch whose rows keep very different numbers of tokens is split into groups of similar
counts (:func:`trimformer.core.packing.plan_row_groups`) that run the remaining blocks separately, each padded
only to its own longest row; results are put back in the original row order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trimformer.core.merging import proportional_attention_bias
from trimformer.core.packing import plan_row_groups, unpack
from trimformer.engine.block import TokenState, run_block
from trimformer.engine.hooks import ForwardHooks
from trimformer.engine.settings import StepSettings
from trimformer.engine.view import BlockView

RECORDS = ("n_in", "n_out", "n_rows", "extra")
Head = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class Outcome:
    """Per-row results of running blocks ``first..L-1`` and the head on some rows."""

    records: dict[str, list[torch.Tensor]]  # per layer from ``first``: [b] each
    head: dict[str, torch.Tensor]  # logits [b, C] / last_hidden_state [b, N, D] (original positions) / pooler
    sizes: torch.Tensor | None  # [b, M] token sizes of the final slots (merging only)


@dataclass
class BlockRun:
    """Runs the blocks of one forward with the policy's hooks (``hooks`` None: the dense computation)."""

    blocks: list[BlockView]
    length: int
    hooks: ForwardHooks
    settings: StepSettings
    head: Head
    regroup: bool = False
    traceable: bool = False  # always unpack a base model's hidden states (no Python test of the positions)

    def blocks_from(self, first: int, state: TokenState) -> Outcome:
        records: dict[str, list[torch.Tensor]] = {k: [] for k in RECORDS}
        no_extra = None  # zeros [b]: the extra MACs of every block that does not merge (one tensor for all)
        proportional = self.hooks.proportional_attention
        for i in range(first, len(self.blocks)):
            hooks = self.hooks.layers[i]
            bias = proportional_attention_bias(state.sizes, state.alive) if proportional and state.sizes is not None \
                else None
            step = run_block(self.blocks[i], state, hooks, self.settings, bias)
            state = step.state
            records["n_in"].append(step.n_in)
            records["n_out"].append(step.n_out)
            records["n_rows"].append(step.n_out if step.n_rows is None else step.n_rows)
            if step.extra_macs is None and no_extra is None:
                no_extra = torch.zeros_like(step.n_in)
            records["extra"].append(no_extra if step.extra_macs is None else step.extra_macs)
            reduced = hooks.decide is not None or hooks.merge is not None
            # A split pays for itself over several blocks: not with a single block left.
            if self.regroup and reduced and i + 2 < len(self.blocks) and state.x.shape[0] > 1:
                counts = [int(c) for c in step.n_out.tolist()]
                groups = plan_row_groups(counts)
                if len(groups) > 1:
                    return self._split(i + 1, state, counts, groups, records)
        head = self.head(state.x, state.alive)
        hidden = head.get("last_hidden_state")
        if hidden is not None and (self.traceable or hidden.shape[1] != self.length or _moved(state.positions)):
            head = {**head, "last_hidden_state": unpack(hidden, state.positions, state.alive, self.length)}
        return Outcome(records, head, state.sizes)

    def _split(self, first: int, state: TokenState, counts: list[int], groups: list[list[int]],
               records: dict[str, list[torch.Tensor]]) -> Outcome:
        """Run blocks ``first..`` on each group of rows, then reassemble the batch in its original order."""
        device = state.x.device
        parts = []
        for group in groups:
            width = max(counts[r] for r in group)
            parts.append(self.blocks_from(first, state.select(torch.tensor(group, device=device), width)))
        order = torch.argsort(torch.tensor([r for g in groups for r in g], device=device))  # back to row order

        def join(tensors: list[torch.Tensor]) -> torch.Tensor:
            width = max(t.shape[1] for t in tensors) if tensors[0].dim() > 1 else 0
            if width:
                tensors = [F.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1])) for t in tensors]
            return torch.cat(tensors)[order]

        for key in RECORDS:
            records[key] += [join([p.records[key][j] for p in parts]) for j in range(len(parts[0].records[key]))]
        head = {k: join([p.head[k] for p in parts]) for k, v in parts[0].head.items() if v is not None}
        sizes = None if parts[0].sizes is None else join([p.sizes for p in parts])
        return Outcome(records, head, sizes)


def _moved(positions: torch.Tensor) -> bool:
    """Whether the slots no longer hold their own positions (a merge reordered them): long [b, N]."""
    return bool((positions != torch.arange(positions.shape[1], device=positions.device)).any())
