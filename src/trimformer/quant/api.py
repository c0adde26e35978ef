"""``quantize_(model, config)``: swap selected nn.Linear / nn.Conv2d layers for fake-quant layers in place.

``config`` is any config type registered in :data:`trimformer.quant.handlers.HANDLERS` (``PWLQConfig``,
``UniformConfig``); its handler quantizes each layer's weight, everything else here is scheme-agnostic.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import BaseQuantConfig
from .handlers import handler_for
from .modules import QUANT_MODULES
from .packing import split_packed, unpack_weight

FilterFn = Callable[[nn.Module, str], bool]


def select_layers(model: nn.Module, config: BaseQuantConfig, filter_fn: FilterFn | None = None) -> list[str]:
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


def _first_glob(name: str, globs) -> str | None:
    return next((g for g in globs if fnmatch.fnmatchcase(name, g)), None)


def check_globs(model: nn.Module, config: BaseQuantConfig, filter_fn: FilterFn | None = None) -> None:
    """ValueError for a glob of ``config`` that would do nothing on ``model``: an include or exclude glob that
    matches no quantizable layer, or a layer_wbits / layer_abits glob that is the first match of no quantized layer
    (a typo, or a glob shadowed by an earlier one)."""
    candidates = [name for name, mod in model.named_modules() if name and type(mod) in QUANT_MODULES]
    chosen = select_layers(model, config, filter_fn)
    unused = []
    if tuple(config.include) != ("*",):
        unused += [("include", g) for g in config.include if not fnmatch.filter(candidates, g)]
    included = [n for n in candidates if any(fnmatch.fnmatchcase(n, g) for g in config.include)]
    unused += [("exclude", g) for g in config.exclude if not fnmatch.filter(included, g)]
    overrides = [("layer_wbits", config.layer_wbits)]
    if config.act is not None:
        overrides.append(("layer_abits", config.layer_abits))
    for field_name, table in overrides:
        winners = {_first_glob(n, table) for n in chosen}
        unused += [(field_name, g) for g in table if g not in winners]
    if unused:
        where = ", ".join(f"{f} glob {g!r} (--{f.replace('_', '-')})" for f, g in unused)
        examples = ", ".join(candidates[:3] + candidates[-2:]) if candidates else "none"
        raise ValueError(f"{where} selects no layer of this model: a glob must match a whole layer name (use '*', "
                         f"e.g. '*classifier*'), and a per-layer glob must be the first match of some quantized "
                         f"layer. Layers: {examples} ({len(candidates)} in all)")


def quantize_(model: nn.Module, config: BaseQuantConfig, filter_fn: FilterFn | None = None) -> nn.Module:
    """Quantize ``model`` in place and return it.

    Weights are quantized once by the handler of ``type(config)`` (``config.wbits``, per-layer overrides); when
    ``config.act`` is set each replaced layer gets an input activation quantizer that must be calibrated with
    ``calibrate``.
    ``filter_fn(module, name)`` can veto layers in addition to the include/exclude globs; a glob that selects no
    layer is an error (:func:`check_globs`). A module
    reachable under several names is replaced everywhere by one quantized copy. The config is recorded as
    ``model.trimformer_quant_config`` (a dict) so that saved artefacts can carry the recipe.
    """
    handler_for(config)  # a registered config type, or a clear ValueError
    if is_quantized(model):
        raise ValueError("model is already quantized; quantize the float model (quantizing twice compounds error)")
    check_globs(model, config, filter_fn)
    chosen = select_layers(model, config, filter_fn)
    new_of: dict[int, nn.Module] = {}
    for name in tqdm(chosen, desc=f"quantize {config.scheme} W{config.wbits}", disable=len(chosen) < 20):
        mod = model.get_submodule(name)
        qcls = QUANT_MODULES[type(mod)]
        new_of[id(mod)] = qcls.from_float(mod, config.weight_config(name), config.act_spec(name), name)
    _replace_modules(model, new_of)
    model.trimformer_quant_config = config.to_dict()
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds layers swapped in by ``quantize_``."""
    return any(isinstance(m, tuple(QUANT_MODULES.values())) for m in model.modules())


ORDER = "finetune -> prune -> quantize"


def refuse_quantized(model: nn.Module, action: str) -> None:
    """ValueError when ``model`` is quantized: ``action`` (fine-tune, prune, fit) needs the float model, since
    quantization is the last step (finetune -> prune -> quantize)."""
    if is_quantized(model):
        raise ValueError(f"cannot {action} a quantized model: quantization is the last step ({ORDER}). Start from "
                         "the float checkpoint it was quantized from, and quantize the result")


def _replace_modules(model: nn.Module, new_of: dict[int, nn.Module]) -> None:
    """Swap every reference to a module (by id) for its replacement; shared modules have several parents."""
    for _, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # named_children() hides repeats
            if id(child) in new_of and child is not new_of[id(child)]:
                setattr(parent, child_name, new_of[id(child)])


def load_quantized_(
    model: nn.Module, config: BaseQuantConfig, tensors: dict[str, torch.Tensor], name_prefix: str = ""
) -> nn.Module:
    """Rebuild a quantized model in place from a float skeleton and :func:`pack_model` tensors.

    The stored codes are used as they are (nothing is re-quantized), so dequantized weights are bit-identical
    to the saved model's; activation ranges and every other tensor come from ``tensors`` too. Layer names
    are matched to ``config``'s globs after removing ``name_prefix`` (e.g. ``"model."`` for a wrapper).
    ``config`` is the saved recipe, e.g. ``config_from_dict(meta["quant_config"])``.
    """
    handler_for(config)
    groups, rest = split_packed(tensors)
    new_of: dict[int, nn.Module] = {}
    for wkey, fields in groups.items():
        name = wkey.removesuffix(".weight")
        try:
            mod = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"quantized layer {name!r} does not exist in this model") from err
        if type(mod) not in QUANT_MODULES:
            raise ValueError(f"quantized layer {name!r} is a {type(mod).__name__}, not nn.Linear / nn.Conv2d")
        short = name.removeprefix(name_prefix)
        qcls = QUANT_MODULES[type(mod)]
        new_of[id(mod)] = qcls.from_float(
            mod, config.weight_config(short), config.act_spec(short), short, qweight=unpack_weight(fields)
        )
    _replace_modules(model, new_of)
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k not in groups]
    if missing or unexpected:
        raise ValueError(f"quantized state does not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.trimformer_quant_config = config.to_dict()
    return model
