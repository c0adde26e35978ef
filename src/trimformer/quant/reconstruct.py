"""Reconstruction building blocks: units (layers or blocks) in execution order, their cached inputs and targets,
the block loss, and the learned rounding of one unit. The calibration stage that runs them is
:mod:`trimformer.quant.recon_stage`; RAPQ's network-wide exponents are :mod:`trimformer.quant.rapq`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._checks import as_channels
from .adaround import RoundingGrid, beta_at, hard_index, init_v, rectified_sigmoid, round_reg, soft_values
from .calibrate import ActQuantizer
from .fisher import first_tensor
from .handlers import handler_for_scheme
from .modules import QuantConv2d, QuantLinear
from .recon_config import ReconFields
from .weights import bias_correction_params

Forward = Callable[[nn.Module, Any], Any]
Weights = list[torch.Tensor] | None  # per cached batch, the weight of each output element (None: all 1)
QUANT_LAYERS = (QuantLinear, QuantConv2d)
_CONTAINERS = (nn.ModuleList, nn.Sequential)


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


# ----------------------------------------------------------------------------------------------- units


def _quant_layers(module: nn.Module) -> list[QuantLinear | QuantConv2d]:
    return [m for m in module.modules() if isinstance(m, QUANT_LAYERS)]


def find_units(model: nn.Module, granularity: str) -> list[tuple[str, nn.Module]]:
    """Reconstruction units of a quantized model, in module order.

    "layer": every quantized layer. "block": walking down from the root, an element of a ModuleList /
    Sequential that holds quantized layers is one unit (a residual block, a BERT layer, a ViT block, a
    conv-BN-ReLU); a quantized layer met on the way (a stem conv, a classifier) is its own unit; any other
    module is searched further. Elements of a ModuleList that is itself an element are searched too.
    """
    if granularity == "layer":
        return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]
    units: list[tuple[str, nn.Module]] = []

    def visit(name: str, mod: nn.Module, in_container: bool) -> None:
        if not _quant_layers(mod):
            return
        if isinstance(mod, QUANT_LAYERS) or (in_container and not isinstance(mod, nn.ModuleList)):
            units.append((name, mod))
            return
        child_in_container = isinstance(mod, _CONTAINERS)
        for child_name, child in mod.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child, child_in_container)

    visit("", model, False)
    return units


def _run(model: nn.Module, batch: Any, fwd: Forward) -> None:
    try:
        fwd(model, batch)
    except _Stop:
        pass


def execution_order(model: nn.Module, units: list[tuple[str, nn.Module]], batch: Any,
                    fwd: Forward) -> list[tuple[str, nn.Module]]:
    """``units`` sorted by their first call on ``batch``; ValueError naming a unit the forward never calls."""
    first: dict[int, int] = {}

    def seen(mod: nn.Module, args: tuple) -> None:
        first.setdefault(id(mod), len(first))

    hooks = [m.register_forward_pre_hook(seen) for _, m in units]
    try:
        with torch.no_grad():
            _run(model, batch, fwd)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, m in units if id(m) not in first]
    if missing:
        raise ValueError(f"the forward never calls reconstruction unit(s) {missing[:3]}: quantize them out "
                         "(exclude=[...]) or use granularity='layer'")
    return sorted(units, key=lambda u: first[id(u[1])])


@contextmanager
def float_weights(model: nn.Module) -> Iterator[None]:
    """Run every quantized layer of ``model`` on its float weight, its input quantizer still in place (so that
    a range calibration inside the block sees the float model's activations)."""
    layers = _quant_layers(model)
    if any(m.float_weight is None for m in layers):
        raise ValueError("reconstruction needs the float weights: quantize the float model again "
                         "(a loaded or already reconstructed model has none)")
    for m in layers:
        m.soft_weight = lambda w=m.float_weight: w
    try:
        yield
    finally:
        for m in layers:
            m.soft_weight = None


@contextmanager
def float_mode(model: nn.Module) -> Iterator[None]:
    """Run every quantized layer of ``model`` as its float original (float weight, no input quantizer)."""
    layers = _quant_layers(model)
    for m in layers:
        m.use_float = True
    try:
        yield
    finally:
        for m in layers:
            m.use_float = False


# ----------------------------------------------------------------------------------------------- data


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch
    return next(_batch_size(v) for v in values if isinstance(v, (torch.Tensor, Mapping, tuple, list)))


def _take(batch: Any, rows: torch.Tensor | slice, size: int) -> Any:
    """Rows of every tensor in ``batch`` whose first dim is the batch size ``size``; the rest unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.ndim and batch.shape[0] == size else batch
    if isinstance(batch, Mapping):
        return {k: _take(v, rows, size) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_take(v, rows, size) for v in batch)
    return batch


def limit_samples(batches: Iterable[Any], n: int) -> list[Any]:
    """The first ``n`` samples of ``batches`` (the last batch cut)."""
    out, seen = [], 0
    for batch in batches:
        size = _batch_size(batch)
        out.append(batch if seen + size <= n else _take(batch, slice(0, n - seen), size))
        seen += min(size, n - seen)
        if seen >= n:
            break
    return out


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, Mapping):
        return {k: _detach(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    return x


def capture(model: nn.Module, unit: nn.Module, batches: list[Any], fwd: Forward,
            output: bool) -> list[Any]:
    """Per batch, the unit's (args, kwargs) (``output=False``) or its output tensor, the forward cut there."""
    got: list[Any] = []

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        got.append((_detach(args), _detach(kwargs)))
        raise _Stop

    def post(mod: nn.Module, args: tuple, out: Any) -> None:
        got.append(first_tensor(out).detach())
        raise _Stop

    handle = unit.register_forward_hook(post) if output else unit.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                n = len(got)
                _run(model, batch, fwd)
                if len(got) == n:
                    raise ValueError("a calibration batch never reached a reconstruction unit")
    finally:
        handle.remove()
    return got


def lp_loss(pred: torch.Tensor, target: torch.Tensor, p: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum over features (channels of a [B, C, H, W] map, else the last dim) of weight * |pred - target|^p, mean
    over the rest; no ``weight`` is weight 1 (``recon_loss="fisher"``: the normalised g^2 of the float output)."""
    dim = 1 if pred.ndim == 4 else -1
    err = (pred - target).abs().pow(p)
    return (err if weight is None else err * weight).sum(dim).mean()


def bn_norm_p(unit: nn.Module) -> float:
    """RAPQ's loss exponent from the unit's last batch norm (or last folded one): round(1 + 0.1 * sigmoid((sum
    gamma - 1) / C), 1); 2.0 when the unit has none."""
    gammas = [m.weight for m in unit.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    gammas += [m.folded_bn_weight for m in _quant_layers(unit) if m.folded_bn_weight is not None]
    if not gammas:
        return 2.0
    g = gammas[-1].detach().float()
    return round(1.0 + 0.1 * float(torch.sigmoid((g.sum() - 1.0) / g.numel())), 1)


# ----------------------------------------------------------------------------------------------- learning


class _LearnedRounding:
    """AdaRound variables of one layer; installs the soft weight while alive."""

    def __init__(self, layer: QuantLinear | QuantConv2d) -> None:
        if layer.float_weight is None:
            raise ValueError("reconstruction needs the float weights: quantize the float model again "
                             "(a loaded or already reconstructed model has none)")
        qw = layer.qweight
        self.layer = layer
        self.handler = handler_for_scheme(qw.scheme)
        self.w2d = as_channels(layer.float_weight, layer.wconfig.per_channel)
        self.grid: RoundingGrid = self.handler.rounding_grid(self.w2d, qw.params, qw.bits, qw.region_bits)
        self.v = nn.Parameter(init_v(self.grid.t - torch.floor(self.grid.t)))
        gain, shift = qw.gain[:, None], qw.shift[:, None]
        layer.soft_weight = lambda: (soft_values(self.grid, self.v) * gain + shift).reshape(qw.shape).to(qw.dtype)

    def reg(self, beta: float) -> torch.Tensor:
        return round_reg(rectified_sigmoid(self.v), beta)

    @torch.no_grad()
    def finish(self) -> None:
        set_codes(self.layer, self.w2d, self.grid.codes(hard_index(self.grid, self.v)))


@torch.no_grad()
def set_codes(layer: QuantLinear | QuantConv2d, w2d: torch.Tensor, codes: torch.Tensor) -> None:
    """Install new codes (and redo bias correction when the config has it); refresh the layer's weight."""
    qw = layer.qweight
    qw.codes = codes
    if layer.wconfig.bias_correction:
        qw.gain, qw.shift = bias_correction_params(w2d, qw.grid_values())
    layer.weight.data = qw.dequantize().to(layer.weight.device)
    layer.soft_weight = None


def _unit_params(unit: nn.Module, cfg: ReconFields) -> tuple[list[_LearnedRounding], list[ActQuantizer]]:
    rounding = [_LearnedRounding(m) for m in _quant_layers(unit)]
    acts = []
    if cfg.learn_act_scale:
        acts = [q for q in unit.modules() if isinstance(q, ActQuantizer) and q.spec.scheme == "uniform"
                and bool(q.calibrated)]
    return rounding, acts


@torch.enable_grad()  # the caller may be inside no_grad
def reconstruct_unit(unit: nn.Module, inputs: list[Any], targets: list[torch.Tensor], cfg: ReconFields,
                     p: float = 2.0, weights: Weights = None) -> dict[str, float]:
    """Learn the rounding of every quantized layer in ``unit`` so that ``unit(*inputs[i])`` matches
    ``targets[i]`` (errors weighted by ``weights[i]`` when given, see :func:`lp_loss`); returns the loss at the
    end on the whole cached data."""
    gen = torch.Generator().manual_seed(cfg.seed)
    rounding, acts = _unit_params(unit, cfg)
    groups = [{"params": [r.v for r in rounding], "lr": cfg.lr}]
    if acts:
        groups.append({"params": [q.start_learning() for q in acts], "lr": cfg.act_lr})
    opt = torch.optim.Adam(groups)

    def minibatch_loss(i: int, rows: torch.Tensor, size: int) -> torch.Tensor:
        args, kwargs = inputs[i]
        pred = first_tensor(unit(*_take(args, rows, size), **_take(kwargs, rows, size)))
        return lp_loss(pred, targets[i][rows], p, None if weights is None else weights[i][rows])

    try:
        annealed_steps(opt, cfg, cfg.iters, targets, minibatch_loss, cfg.reg_weight,
                       lambda beta: sum(r.reg(beta) for r in rounding), gen)
    finally:
        for r in rounding:
            r.finish()
        for q in acts:
            q.finish_learning()
    return {"loss": unit_loss(unit, inputs, targets, p, weights)}


def annealed_steps(opt: torch.optim.Optimizer, cfg: ReconFields, iters: int, targets: list[torch.Tensor],
                   minibatch_loss: Callable[[int, torch.Tensor, int], torch.Tensor], reg_weight: float,
                   reg: Callable[[float], torch.Tensor], gen: torch.Generator) -> None:
    """``iters`` optimiser steps, each on a random cached batch i and ``cfg.batch_size`` random rows of it:
    ``minibatch_loss(i, rows, size)`` plus ``reg_weight * reg(beta)``, beta annealed by ``cfg`` (none in the
    warm-up). Shared by the rounding (:func:`reconstruct_unit`) and RAPQ's exponents."""
    for step in range(iters):
        i = int(torch.randint(len(targets), (1,), generator=gen))
        size = targets[i].shape[0]
        rows = torch.randperm(size, generator=gen)[: cfg.batch_size]
        loss = minibatch_loss(i, rows, size)
        beta = beta_at(step, iters, cfg.warmup, cfg.beta_start, cfg.beta_end)
        if beta is not None and reg_weight > 0:
            loss = loss + reg_weight * reg(beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def unit_loss(unit: nn.Module, inputs: list[Any], targets: list[torch.Tensor], p: float = 2.0,
              weights: Weights = None) -> float:
    """Mean reconstruction loss of ``unit`` over cached ``inputs`` / ``targets`` (/ ``weights``)."""
    ws = [None] * len(targets) if weights is None else weights
    losses = [float(lp_loss(first_tensor(unit(*a, **k)), t, p, w))
              for (a, k), t, w in zip(inputs, targets, ws, strict=True)]
    return sum(losses) / len(losses)
