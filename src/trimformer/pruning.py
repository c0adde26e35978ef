"""``trimformer.prune``: any registered method config on any supported model, one call."""

from __future__ import annotations

from typing import Any

from torch import nn

from trimformer.adapters import adapter_for
from trimformer.engine import ExecutionOptions
from trimformer.methods import method_of
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import refuse_quantized


def prune(model: nn.Module, config: Any, options: ExecutionOptions | None = None,
          **option_changes: Any) -> TokenPrunedModel:
    """Wrap ``model`` (weights shared, not copied) with the token-reduction method that ``config`` describes.

    ``config`` is any method config (``LTPConfig``, ``TopKConfig``, ``SaiTConfig``, ``ASViTConfig``, ``EViTConfig``,
    ``ToMeConfig``); the policy is built for the model's depth, read from its adapter. ``options`` /
    ``option_changes`` set the execution options (see :class:`~trimformer.engine.ExecutionOptions`).
    A ``TokenPrunedModel`` given here is re-pruned from its bare model. A quantized model is refused: prune the
    float model, then quantize (finetune -> prune -> quantize).
    """
    if getattr(type(config), "structured_method", None):
        raise TypeError(f"{type(config).__name__} removes channels and trains on data: call "
                        "trimformer.structured_prune(model, config, train=(images, labels)), which returns the "
                        "smaller model")
    if isinstance(model, TokenPrunedModel):
        options = options or model.execution
        model = model.model
    refuse_quantized(model, "prune")
    adapter = adapter_for(model)
    spec = method_of(config)
    if adapter.task not in spec.tasks:
        raise ValueError(f"{spec.name} ({type(config).__name__}) is made for {' and '.join(spec.tasks)} models; "
                         f"{type(model).__name__} is a {adapter.task} model. Methods for it: "
                         f"{', '.join(_methods_for(adapter.task))}")
    policy = spec.build_policy(config, adapter.num_blocks(model))
    return TokenPrunedModel(model, policy, options, **option_changes)


def _methods_for(task: str) -> list[str]:
    from trimformer.methods import registered_methods

    return [f"{s.name} ({s.config_type.__name__})" for s in registered_methods() if task in s.tasks]
