"""TokenPrunedModel: a transformers model run layer by layer with token pruning."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.adapters import adapter_for
from trimformer.core.flops import dense_encoder_flops, encoder_flops
from trimformer.engine import NO_HOOKS, BlockView, ExecutionOptions, ForwardHooks, StepSettings, TokenState, WeightCache
from trimformer.engine.policy import PruningPolicy
from trimformer.engine.runner import RECORDS, BlockRun
from trimformer.engine.view import layer_widths


@dataclass
class PrunedOutput:
    """What a forward returns; every forward builds its own (no state kept between calls)."""

    logits: torch.Tensor | None  # [B, C] for classification models
    loss: torch.Tensor | None
    n_in: torch.Tensor  # [B, L] live tokens entering each layer (expected counts in the soft stage)
    n_out: torch.Tensor  # [B, L] tokens kept after each layer's decision
    lengths: torch.Tensor  # [B] real tokens of each input
    hidden_size: int
    mlp_size: int | torch.Tensor  # one MLP width, or [L] per layer once MLP channels were pruned (trimformer.heads)
    last_hidden_state: torch.Tensor | None = None  # [B, N, D] base models: back at original positions
    pooler_output: torch.Tensor | None = None
    n_rows: torch.Tensor | None = None  # [B, L] query rows with an attention output (n_in where tokens merge)
    token_sizes: torch.Tensor | None = None  # [B, M] original tokens behind each final slot (merging only)
    extra_macs: torch.Tensor | None = None  # [B, L] MACs of merge decisions (ToMe's similarities; 0 elsewhere)
    attn_widths: torch.Tensor | None = None  # [L] heads x head size per layer once heads were pruned; None: hidden

    # FLOPs are computed on first use only: a dozen small operations that a batch-1 forward need not pay for.
    @cached_property
    def flops(self) -> torch.Tensor:
        """[B] encoder FLOPs per sample at these counts (differentiable in the soft stage)."""
        return encoder_flops(self.hidden_size, self.mlp_size, self.n_in, self.n_out, self.n_rows, self.extra_macs,
                             self.attn_widths)

    @cached_property
    def dense_flops(self) -> torch.Tensor:
        """[B] encoder FLOPs of this model without token pruning on the real length (with its pruned heads and MLP
        channels, if any: the reference of token pruning's FLOPs targets)."""
        return dense_encoder_flops(self.hidden_size, self.mlp_size, self.n_in.shape[1], self.lengths,
                                   self.attn_widths).to(self.n_in.dtype)

    @property
    def flops_ratio(self) -> torch.Tensor:
        """Batch FLOPs over dense FLOPs (a scalar, differentiable in the soft stage)."""
        return self.flops.sum() / self.dense_flops.sum()


def task_loss(logits: torch.Tensor, labels: torch.Tensor, config: Any) -> torch.Tensor:
    """The loss transformers' sequence classifiers use: MSE for regression (one output, or ``problem_type``
    'regression'), cross-entropy for class ids. logits [B, C], labels [B] -> scalar."""
    labels = labels.to(logits.device)
    problem = getattr(config, "problem_type", None)
    if problem == "regression" or (problem is None and logits.shape[-1] == 1):
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


class TokenPrunedModel(nn.Module):
    """Wraps a supported transformers or timm model; its weights are shared, not copied.

    How it runs is one :class:`~trimformer.engine.ExecutionOptions` object, ``model.execution``: the mode
    (``'packed'`` removes pruned tokens, ``'masked'`` keeps the length and masks them), whether pruning is on,
    and the CPU-only measures (regrouping, attention row chunks, live-slot compaction, the linear kernel). Change
    it with :meth:`set_options`, or for a block of code with ``with model.options(mode="masked"): ...``; it is
    resolved once per forward. ``policy=None`` or ``options(pruning=False)`` runs the original computation.
    Merging policies (ToMe, EViT) run on the same loop; a base model's ``last_hidden_state`` then holds each
    merged token at the position of the token that absorbed the others (zeros where tokens were merged away).

    The block views (references to the model's modules) are built here and rebuilt by :meth:`rebuild_views`,
    which ``train()``/``eval()``, ``trimformer.quantize_`` and ``trimformer.load`` call: after swapping modules
    of ``model.model`` by hand, call it (or ``eval()``) before the next forward.
    """

    def __init__(self, model: nn.Module, policy: PruningPolicy | None = None,
                 options: ExecutionOptions | None = None, **option_changes: Any):
        super().__init__()
        self.adapter = adapter_for(model)
        self.model = model
        self.policy = policy
        self.execution = (options or ExecutionOptions()).replace(**option_changes)
        self._weights = WeightCache()  # oneDNN packings and stacked q/k/v of this model's weights
        self.rebuild_views()

    def rebuild_views(self) -> None:
        """Build the block views again from the model's current modules (after a module was swapped)."""
        self._views: list[BlockView] = self.adapter.blocks(self.model)
        self._widths = layer_widths(self._views)  # (attention widths [L] or None, MLP width(s))
        self._dense_hooks = ForwardHooks((NO_HOOKS,) * len(self._views))
        if self.policy is not None and self.policy.num_layers != len(self._views):
            raise ValueError(f"the policy was built for {self.policy.num_layers} blocks but the model has "
                             f"{len(self._views)}: build it with trimformer.prune(model, config)")

    def train(self, mode: bool = True) -> TokenPrunedModel:
        super().train(mode)
        self.rebuild_views()
        return self

    @property
    def num_layers(self) -> int:
        return len(self._views)

    @property
    def mode(self) -> str:
        """The execution mode, ``'packed'`` or ``'masked'`` (a shorthand for ``execution.mode``)."""
        return self.execution.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.set_options(mode=value)

    def set_options(self, **changes: Any) -> None:
        """Change execution options from now on (names and values as in :class:`ExecutionOptions`)."""
        self.execution = self.execution.replace(**changes)

    @contextmanager
    def options(self, **changes: Any) -> Iterator[TokenPrunedModel]:
        """Run the enclosed code with ``changes`` to the execution options, then restore them."""
        previous = self.execution
        self.execution = previous.replace(**changes)
        try:
            yield self
        finally:
            self.execution = previous

    def pruning_disabled(self):
        """``options(pruning=False)``: the original computation on the same engine."""
        return self.options(pruning=False)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, special_tokens_mask: torch.Tensor | None = None) -> PrunedOutput:
        """Run the model. ``special_tokens_mask`` (1 at [CLS] and every [SEP], as tokenizers return it; given
        for sentence pairs by ``text_collate``): those real tokens are never pruned. ``labels``: class ids
        (cross-entropy) or float targets of a one-output model (MSE)."""
        options = self.execution
        device = next(self.model.parameters()).device  # inputs follow the model (CPU batches, GPU model)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                  "pixel_values": pixel_values}
        inputs = {k: v.to(device) if v is not None else None for k, v in inputs.items()}
        if not options.traceable:  # a graph cannot raise: a traced or compiled forward takes its inputs as they are
            self.adapter.check_inputs(self.model, inputs)
        x, alive = self.adapter.embed(self.model, inputs)  # [B, N, D], bool [B, N]
        lengths = alive.sum(dim=1)  # [B] real tokens
        batch, length, _ = x.shape
        positions = torch.arange(length, device=x.device).expand(batch, -1)
        num_prefix = self.adapter.num_prefix_tokens(self.model)
        use_policy = self.policy is not None and options.pruning
        hooks = self.policy.hooks(num_prefix) if use_policy else self._dense_hooks
        # Row chunks and regrouping split batches: not under gradients, nor when a policy records whole batches.
        splittable = not torch.is_grad_enabled() and not hooks.whole_batch
        on_cpu = x.device.type == "cpu"
        run = BlockRun(
            blocks=self._views, length=length, hooks=hooks,
            settings=StepSettings.resolve(options, self._weights, splittable=splittable, on_cpu=on_cpu),
            head=lambda hidden, live: self.adapter.head(self.model, hidden, live),
            # Regrouping trades padding for more, smaller steps: a gain on a CPU, a loss on a GPU (measured on an
            # H100: 0.76x against 1.13x of dense at batch 256 for SaiT's input-adaptive policy).
            regroup=splittable and options.regroup and options.mode == "packed" and on_cpu and not options.traceable,
            traceable=options.traceable,
        )
        protected = None if special_tokens_mask is None else special_tokens_mask.to(device).bool() & alive  # [B, N]
        full_rows = True if inputs["attention_mask"] is None else None  # no mask: every row is all real tokens
        out = run.blocks_from(0, TokenState(x, alive, positions, n_live=lengths.to(x.dtype), all_live=full_rows,
                                            protected=protected))
        n_in_t, n_out_t, n_rows_t, extra_t = (torch.stack(out.records[k], dim=1) for k in RECORDS)  # [B, L]
        logits = out.head.get("logits")
        loss = (task_loss(logits, labels, getattr(self.model, "config", None))  # timm models have no config
                if labels is not None and logits is not None else None)
        return PrunedOutput(
            logits=logits, loss=loss, n_in=n_in_t, n_out=n_out_t, lengths=lengths,
            hidden_size=self._views[0].hidden_size, mlp_size=self._widths[1], attn_widths=self._widths[0],
            last_hidden_state=out.head.get("last_hidden_state"), pooler_output=out.head.get("pooler_output"),
            n_rows=n_rows_t, token_sizes=out.sizes, extra_macs=extra_t,
        )
