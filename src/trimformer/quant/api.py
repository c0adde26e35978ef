"""``quantize_(model, config)``: swap selected nn.Linear / nn.Conv2d layers for fake-quant layers in place."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .config import QuantConfig
from .modules import QUANT_MODULES

FilterFn = Callable[[nn.Module, str], bool]


def select_layers(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> list[str]:
    """Names of the layers ``quantize_`` would replace.

    Only exact nn.Linear / nn.Conv2d types are taken (subclasses such as the out-projection of
    nn.MultiheadAttention, whose weight is read directly by its parent, are skipped); the root module
    itself is never replaced.
    """
    names = []
    for name, mod in model.named_modules():
        if not name or type(mod) not in QUANT_MODULES:
            continue
        if config.selects(name) and (filter_fn is None or filter_fn(mod, name)):
            names.append(name)
    return names


def quantize_(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> nn.Module:
    """Quantize ``model`` in place and return it.

    Weights are quantized once (``config.wbits``, per-layer overrides); when ``config.abits`` is set each
    replaced layer gets an input activation quantizer that must be calibrated with ``calibrate``.
    ``filter_fn(module, name)`` can veto layers in addition to the include/exclude globs. A module
    reachable under several names is replaced everywhere by one quantized copy. The config is recorded as
    ``model.trimformer_quant_config`` (a dict) so that saved artefacts can carry the recipe.
    """
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a QuantConfig, got {type(config).__name__}")
    config.validate()
    chosen = select_layers(model, config, filter_fn)
    new_of: dict[int, nn.Module] = {}
    for name in chosen:
        mod = model.get_submodule(name)
        qcls = QUANT_MODULES[type(mod)]
        new_of[id(mod)] = qcls.from_float(mod, config.weight_spec(name), config.act_spec(name), name)  # type: ignore[attr-defined]
    # replace every reference (shared modules appear under several parents)
    for _, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # named_children() hides repeats
            if id(child) in new_of and child is not new_of[id(child)]:
                setattr(parent, child_name, new_of[id(child)])
    model.trimformer_quant_config = config.to_dict()
    return model
