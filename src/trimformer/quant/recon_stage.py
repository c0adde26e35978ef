"""Reconstruction: the calibration stage of the AdaRound / BRECQ / RAPQ / PWLQ+AdaRound schemes.

``quantize_`` with one of these configs rounds to nearest and keeps each layer's float weight (in memory, not
in checkpoints). ``calibrate(model, batches)`` then calibrates the activation ranges on the float weights (the
activations reconstruction aims for: at 2 bits the round-to-nearest model's are far off) and calls
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

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibrate import ActQuantizer, _default_forward, calibration
from .fisher import capture_with_fisher, fisher_weights
from .handlers import config_from_dict
from .rapq import learn_exponents
from .recon_config import RAPQConfig, ReconFields
from .reconstruct import (
    Forward,
    Weights,
    _quant_layers,
    bn_norm_p,
    capture,
    execution_order,
    find_units,
    float_mode,
    float_weights,
    limit_samples,
    reconstruct_unit,
    unit_loss,
)


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
        bar = tqdm(units, desc=f"reconstruct ({cfg.granularity}s)", unit=cfg.granularity,
                   disable=len(units) < 4, leave=False)  # a ViT's twelve blocks take minutes each on a CPU
        for name, unit in bar:
            inputs = capture(model, unit, data, fwd, output=False)
            targets, weights = unit_targets(model, unit, data, fwd, cfg.recon_loss)
            p = bn_norm_p(unit) if isinstance(cfg, RAPQConfig) and cfg.bn_norm else 2.0
            before = unit_loss(unit, inputs, targets, p, weights)
            after = reconstruct_unit(unit, inputs, targets, cfg, p, weights)["loss"]
            records.append({"unit": name, "p": p, "recon_loss": "mse" if weights is None else "fisher",
                            "loss_nearest": before, "loss": after})
            bar.set_postfix_str(f"{name}: loss {before:.3g} -> {after:.3g}")
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
    """Calibrate a quantized ``model``: activation ranges (when it has activation quantizers; a reconstruction
    scheme takes them on the float weights, the activations it reconstructs towards), then, for a reconstruction
    scheme, :func:`reconstruct`. Returns the names of activation quantizers that saw no data.

    A batch is passed as ``model(**batch)`` (dict / BatchEncoding), ``model(*batch)`` or ``model(batch)``,
    unless ``forward(model, batch)`` is given.
    """
    recon = recon_config(model) is not None
    if recon:
        batches = list(batches)  # read twice
    unseen: list[str] = []
    if has_act_quantizers(model) or not recon:
        fwd = forward or _default_forward
        with torch.no_grad(), calibration(model) as unseen, float_weights(model) if recon else nullcontext():
            for batch in batches:
                fwd(model, batch)
    if recon:
        model.trimformer_recon_report = reconstruct(model, batches, forward)
    return unseen
