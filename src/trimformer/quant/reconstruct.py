"""Reconstruction: the calibration stage of the AdaRound / BRECQ / RAPQ / PWLQ+AdaRound schemes.

``quantize_`` with one of these configs rounds to nearest and keeps each layer's float weight (in memory, not
in checkpoints). ``calibrate(model, batches)`` then calibrates the activation ranges and calls
:func:`reconstruct`, which, unit by unit in execution order (a unit is a quantized layer, or with
``granularity="block"`` a block found from the module structure, see :func:`find_units`):

1. caches the unit's inputs from the model quantized so far (earlier units already reconstructed) and its
   target outputs from the float model (every layer in float mode, see :func:`float_mode`), on the first
   ``calib_samples`` calibration samples; with ``recon_loss="fisher"`` also the squared task-loss gradient g^2
   at those outputs (:mod:`trimformer.quant.fisher`), normalised to mean 1;
2. learns each weight's rounding (:mod:`trimformer.quant.adaround`) on loss = sum over features of
   w * |out - target|^p, mean over the rest (p = 2; RAPQ: set from the block's batch-norm scales; w = 1, or the
   normalised g^2), plus the annealed regulariser; optionally the unit's activation steps too
   (``learn_act_scale``);
3. ends hard: new codes (every weight the floor or the ceil of its grid index), the float weight dropped.

RAPQ first learns every layer's power-of-two exponents jointly on the network output (:func:`learn_exponents`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._checks import as_channels
from .adaround import RoundingGrid, beta_at, hard_index, init_v, rectified_sigmoid, round_reg, soft_values
from .calibrate import ActQuantizer, _default_forward, calibration
from .fisher import capture_with_fisher, first_tensor, fisher_weights
from .handlers import config_from_dict, exponent_of, handler_for_scheme, pow2_of
from .modules import QuantConv2d, QuantLinear
from .recon_config import RAPQConfig, ReconFields
from .uniform import mse_clip_absmax, qmax_symmetric, quantize_symmetric, symmetric_scale
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
    try:
        for step in range(cfg.iters):
            i = int(torch.randint(len(inputs), (1,), generator=gen))
            (args, kwargs), target = inputs[i], targets[i]
            size = target.shape[0]
            rows = torch.randperm(size, generator=gen)[: cfg.batch_size]
            pred = first_tensor(unit(*_take(args, rows, size), **_take(kwargs, rows, size)))
            loss = lp_loss(pred, target[rows], p, None if weights is None else weights[i][rows])
            beta = beta_at(step, cfg.iters, cfg.warmup, cfg.beta_start, cfg.beta_end)
            if beta is not None and cfg.reg_weight > 0:
                loss = loss + cfg.reg_weight * sum(r.reg(beta) for r in rounding)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for r in rounding:
            r.finish()
        for q in acts:
            q.finish_learning()
    return {"loss": unit_loss(unit, inputs, targets, p, weights)}


@torch.no_grad()
def unit_loss(unit: nn.Module, inputs: list[Any], targets: list[torch.Tensor], p: float = 2.0,
              weights: Weights = None) -> float:
    """Mean reconstruction loss of ``unit`` over cached ``inputs`` / ``targets`` (/ ``weights``)."""
    ws = [None] * len(targets) if weights is None else weights
    losses = [float(lp_loss(first_tensor(unit(*a, **k)), t, p, w))
              for (a, k), t, w in zip(inputs, targets, ws, strict=True)]
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------------------------- RAPQ


def pow2_weight_error(w2d: torch.Tensor, exponent: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row mean squared error of ``w2d`` [C, K] rounded to nearest on the grid of step 2^exponent [C]."""
    qmax = qmax_symmetric(bits)
    scale = torch.exp2(exponent)[:, None]
    return ((torch.round(w2d / scale).clamp(-qmax, qmax) * scale - w2d) ** 2).mean(dim=1)


def exponent_start(w2d: torch.Tensor, e0: torch.Tensor, bits: int) -> torch.Tensor:
    """Initial h in [0, 1] of each row's relaxed exponent floor(e0) + h: its distance from 1/2 is that of e0's
    fraction, its side that of the power of two (floor or floor + 1) with the smaller weight error. Starting from
    the fraction alone rounds a scale down whenever it is under 2^(floor + 1/2), which at 8 bits clips the largest
    weights (measured: RAPQ W8A8 lost 4-12 points on the Fashion-MNIST CNNs, see docs/quantization.md)."""
    floor = torch.floor(e0)
    frac = e0 - floor
    ceil_better = pow2_weight_error(w2d, floor + 1, bits) < pow2_weight_error(w2d, floor, bits)
    far = torch.maximum(torch.maximum(frac, 1 - frac), torch.full_like(frac, 0.501))  # (1/2, 1]: a side, always
    return torch.where(ceil_better, far, 1 - far).clamp(0.0, 0.999)


class _LearnedExponent:
    """Continuous power-of-two exponent per row, 2^(floor(e0) + h(a)), weights rounded straight-through."""

    def __init__(self, layer: QuantLinear | QuantConv2d) -> None:
        if layer.float_weight is None:
            raise ValueError("RAPQ needs the float weights: quantize the float model again")
        qw = layer.qweight
        self.layer = layer
        self.bits = qw.bits
        self.w2d = as_channels(layer.float_weight, layer.wconfig.per_channel)
        e0 = torch.log2(symmetric_scale(mse_clip_absmax(self.w2d, qw.bits), qw.bits))
        self.floor = torch.floor(e0)
        self.a = nn.Parameter(init_v(exponent_start(self.w2d, e0, qw.bits)))
        qmax = qmax_symmetric(qw.bits)

        def weight() -> torch.Tensor:
            scale = torch.exp2(self.floor + rectified_sigmoid(self.a))[:, None]
            t = self.w2d / scale
            q = (t + (torch.round(t) - t).detach()).clamp(-qmax, qmax)
            return (q * scale).reshape(qw.shape).to(qw.dtype)

        layer.soft_weight = weight

    def reg(self, beta: float) -> torch.Tensor:
        return round_reg(rectified_sigmoid(self.a), beta)

    @torch.no_grad()
    def finish(self) -> None:
        exponent = exponent_of(pow2_of((self.floor + (self.a >= 0).float()).to(torch.int64)))
        qw = self.layer.qweight
        qw.params = {"exponent": exponent}
        set_codes(self.layer, self.w2d, quantize_symmetric(self.w2d, pow2_of(exponent), self.bits))


@torch.enable_grad()
def learn_exponents(model: nn.Module, batches: list[Any], fwd: Forward, cfg: RAPQConfig) -> dict[str, float]:
    """RAPQ stage 1: every layer's exponents trained jointly on the network output error, then rounded."""
    with float_mode(model):
        targets = [first_tensor(fwd(model, b)).detach() for b in batches]
    learned = [_LearnedExponent(m) for m in _quant_layers(model)]
    opt = torch.optim.Adam([e.a for e in learned], lr=cfg.exp_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    try:
        for step in range(cfg.exp_iters):
            i = int(torch.randint(len(batches), (1,), generator=gen))
            size = targets[i].shape[0]
            rows = torch.randperm(size, generator=gen)[: cfg.batch_size]
            loss = lp_loss(first_tensor(fwd(model, _take(batches[i], rows, size))), targets[i][rows], 2.0)
            beta = beta_at(step, cfg.exp_iters, cfg.warmup, cfg.beta_start, cfg.beta_end)
            if beta is not None and cfg.exp_reg_weight > 0:
                loss = loss + cfg.exp_reg_weight * sum(e.reg(beta) for e in learned)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for e in learned:
            e.finish()
    with torch.no_grad():
        err = [float(lp_loss(first_tensor(fwd(model, b)), t, 2.0)) for b, t in zip(batches, targets, strict=True)]
    return {"output_loss": sum(err) / len(err)}


# ----------------------------------------------------------------------------------------------- verbs


def recon_config(model: nn.Module) -> ReconFields | None:
    """The reconstruction config ``quantize_`` recorded on ``model``, or None for the other schemes."""
    d = getattr(model, "trimformer_quant_config", None)
    cfg = config_from_dict(d) if d is not None else None
    return cfg if isinstance(cfg, ReconFields) else None


def reconstruct(model: nn.Module, batches: Iterable[Any], forward: Forward | None = None) -> list[dict[str, Any]]:
    """Run the reconstruction stage of ``model``'s scheme (see the module docstring) on the first
    ``calib_samples`` samples of ``batches``; returns one record per unit (name, loss at round-to-nearest,
    loss after, loss exponent p, the loss used: "mse" or "fisher"). The float weights are dropped afterwards."""
    cfg = recon_config(model)
    if cfg is None:
        raise ValueError("model was not quantized with a reconstruction scheme (AdaRoundConfig, BRECQConfig, "
                         "RAPQConfig, PWLQAdaRoundConfig)")
    if any(m.float_weight is None for m in _quant_layers(model)):
        raise ValueError("reconstruction needs the float weights: quantize the float model again "
                         "(a loaded or already reconstructed model has none)")
    fwd = forward or _default_forward
    data = limit_samples(batches, cfg.calib_samples)
    if not data:
        raise ValueError("reconstruction got no calibration batches")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    records: list[dict[str, Any]] = []
    try:
        if isinstance(cfg, RAPQConfig) and cfg.exp_iters > 0:
            records.append({"unit": "<exponents>", **learn_exponents(model, data, fwd, cfg)})
        units = execution_order(model, find_units(model, cfg.granularity), data[0], fwd)
        for name, unit in units:
            inputs = capture(model, unit, data, fwd, output=False)
            targets, weights = unit_targets(model, unit, data, fwd, cfg.recon_loss)
            p = bn_norm_p(unit) if isinstance(cfg, RAPQConfig) and cfg.bn_norm else 2.0
            before = unit_loss(unit, inputs, targets, p, weights)
            after = reconstruct_unit(unit, inputs, targets, cfg, p, weights)["loss"]
            records.append({"unit": name, "p": p, "recon_loss": "mse" if weights is None else "fisher",
                            "loss_nearest": before, "loss": after})
    finally:
        for m, training in modes.items():
            m.training = training
    for m in _quant_layers(model):
        m.float_weight = None
    return records


def unit_targets(model: nn.Module, unit: nn.Module, data: list[Any], fwd: Forward,
                 recon_loss: str) -> tuple[list[torch.Tensor], Weights]:
    """The float model's outputs of ``unit`` per batch and, for ``recon_loss="fisher"``, their normalised
    Fisher weights (:mod:`trimformer.quant.fisher`; None when no gradient reaches the unit: plain MSE)."""
    with float_mode(model):
        if recon_loss != "fisher":
            return capture(model, unit, data, fwd, output=True), None
        targets, squared = capture_with_fisher(model, unit, data, fwd)
    return targets, fisher_weights(squared)


def has_act_quantizers(model: nn.Module) -> bool:
    return any(isinstance(m, ActQuantizer) for m in model.modules())


def calibrate(model: nn.Module, batches: Iterable[Any], forward: Forward | None = None) -> list[str]:
    """Calibrate a quantized ``model``: activation ranges (when it has activation quantizers), then, for a
    reconstruction scheme, :func:`reconstruct`. Returns the names of activation quantizers that saw no data.

    A batch is passed as ``model(**batch)`` (dict / BatchEncoding), ``model(*batch)`` or ``model(batch)``,
    unless ``forward(model, batch)`` is given.
    """
    recon = recon_config(model) is not None
    if recon:
        batches = list(batches)  # read twice
    unseen: list[str] = []
    if has_act_quantizers(model) or not recon:
        fwd = forward or _default_forward
        with torch.no_grad(), calibration(model) as unseen:
            for batch in batches:
                fwd(model, batch)
    if recon:
        model.trimformer_recon_report = reconstruct(model, batches, forward)
    return unseen

