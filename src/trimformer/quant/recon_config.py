"""Configs of the reconstruction schemes: AdaRound, BRECQ, RAPQ and PWLQ + AdaRound.

Each is a weight scheme like :class:`~trimformer.quant.config.UniformConfig` (``quantize_`` rounds to nearest)
whose ``calibrate`` stage then learns, on calibration data, which way each weight rounds (AdaRound, Nagel et
al. 2020) so that the output of a layer (``granularity="layer"``) or of a block (``"block"``, BRECQ, Li et al.
2021) matches the float model's, with the unit's inputs taken from the model quantized so far. See
:mod:`trimformer.quant.reconstruct`. The shared knobs live in :class:`ReconFields`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from ._checks import check_choice
from .config import BaseQuantConfig, PWLQConfig, UniformConfig

GRANULARITIES = ("layer", "block")
RECON_LOSSES = ("mse", "fisher")


def _positive_int(value: Any, what: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")


def _number(value: Any, what: str, lo: float, hi: float, lo_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        raise ValueError(f"{what} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ReconFields:
    """Knobs of the reconstruction stage (mixed into the reconstruction configs; not a config by itself).

    iters: optimisation steps per reconstructed unit; batch_size: calibration samples per step; lr: Adam
    learning rate of the rounding variables; reg_weight: weight of the rounding regulariser
    sum(1 - |2h - 1|^beta); beta_start / beta_end: its exponent, annealed linearly after ``warmup`` (fraction
    of ``iters`` without the regulariser); granularity: "layer" (AdaRound) or "block" (BRECQ: a block found
    from the module structure, e.g. a residual block, a BERT layer, a ViT block); calib_samples: calibration
    samples used for reconstruction (the first ones ``calibrate`` receives); learn_act_scale: also learn the
    step of the unit's input activation quantizers (LSQ-style, straight-through rounding) at ``act_lr``;
    seed: seeds the minibatch sampling.

    recon_loss: "mse" (each output error counts the same) or "fisher" (BRECQ's loss: each squared error weighted
    by g^2, g the gradient of the float model's cross-entropy at the unit's output, against the batch's
    ``labels`` or else its own predictions; g^2 divided by its mean over the unit's calibration outputs, so the
    loss keeps the MSE's scale and ``lr`` its meaning; with RAPQ's p it weights |error|^p; RAPQ's exponent
    stage is unchanged). "fisher" costs, per unit, a full forward and backward of the float model per
    calibration batch instead of a forward cut at the unit, and memory for g^2 as large as the cached targets;
    it needs a model with classification logits. "mse" stays the default: it works for any model (a backbone
    without logits too), costs nothing extra, and keeps earlier results unchanged.
    """

    iters: int = 1000
    batch_size: int = 32
    lr: float = 1e-2
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    granularity: str = "layer"
    calib_samples: int = 256
    learn_act_scale: bool = False
    act_lr: float = 4e-5
    seed: int = 0
    recon_loss: str = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # the BaseQuantConfig checks
        _positive_int(self.iters, "iters")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.calib_samples, "calib_samples")
        _positive_int(self.seed, "seed", minimum=0)
        _number(self.lr, "lr", 0.0, 10.0)
        _number(self.act_lr, "act_lr", 0.0, 10.0)
        _number(self.reg_weight, "reg_weight", 0.0, 1e6, lo_open=False)
        _number(self.beta_start, "beta_start", 0.0, 1e3)
        _number(self.beta_end, "beta_end", 0.0, 1e3)
        _number(self.warmup, "warmup", 0.0, 1.0, lo_open=False)
        if self.beta_end > self.beta_start:
            raise ValueError(f"beta is annealed downwards: beta_end ({self.beta_end}) must be <= beta_start "
                             f"({self.beta_start})")
        check_choice(self.granularity, GRANULARITIES, "granularity")
        check_choice(self.recon_loss, RECON_LOSSES, "recon_loss")
        if not isinstance(self.learn_act_scale, bool):
            raise ValueError(f"learn_act_scale must be True or False, got {self.learn_act_scale!r}")

    def recon_dict(self) -> dict[str, Any]:
        """Just the reconstruction knobs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ReconFields)}


@dataclass(frozen=True, kw_only=True)
class AdaRoundConfig(ReconFields, UniformConfig):
    """Symmetric uniform weights (MSE-clipped scale) whose rounding is learned by AdaRound during ``calibrate``."""

    scheme: ClassVar[str] = "adaround"

    bias_correction: bool = False  # the reconstruction corrects the output itself
    weight_clip: str = "mse"


@dataclass(frozen=True, kw_only=True)
class BRECQConfig(AdaRoundConfig):
    """AdaRound reconstructed block by block (BRECQ): the same knobs, ``granularity="block"`` by default."""

    scheme: ClassVar[str] = "brecq"

    granularity: str = "block"


@dataclass(frozen=True, kw_only=True)
class PWLQAdaRoundConfig(ReconFields, PWLQConfig):
    """PWLQ weights (regions and grids as :class:`PWLQConfig`) with AdaRound's learned up/down rounding inside
    each weight's piece."""

    scheme: ClassVar[str] = "pwlq_adaround"

    bias_correction: bool = False


@dataclass(frozen=True, kw_only=True)
class RAPQConfig(ReconFields, BaseQuantConfig):
    """RAPQ (Yao et al., IJCAI 2022): power-of-two weight scales, exponents learned over the whole network.

    Stage 1 (``exp_iters`` steps, Adam at ``exp_lr``): every layer's per-channel scale is 2^(floor(e0) + h(a)),
    e0 = log2 of its MSE scale and h the rectified sigmoid, with weights rounded to nearest (straight-through);
    all exponents are trained jointly on the network's output error, plus ``exp_reg_weight`` times the
    regulariser pushing h to 0 or 1; then rounded hard, so every scale is exactly 2^integer. Stage 2: BRECQ-style
    AdaRound at the fixed scales, the block loss an L_p norm with p set from the block's batch-norm scales
    (``bn_norm``; p = 2 without). Activation steps are powers of two (``act.pow2`` is forced on).
    ``bias_correction`` must stay off (it would rescale the power-of-two grid).
    """

    scheme: ClassVar[str] = "rapq"

    granularity: str = "block"
    bias_correction: bool = False
    pow2_scale: bool = True
    exp_iters: int = 200
    exp_lr: float = 1e-2
    exp_reg_weight: float = 0.1
    bn_norm: bool = True

    def __post_init__(self) -> None:
        if self.act is not None and not self.act.pow2:
            object.__setattr__(self, "act", dataclasses.replace(self.act, pow2=True))
        super().__post_init__()
        if not self.pow2_scale:
            raise ValueError("RAPQ scales are powers of two by definition: pow2_scale must stay True")
        if self.bias_correction:
            raise ValueError("RAPQ keeps bias_correction off: its per-channel gain would break the power-of-two "
                             "scales (the reconstruction corrects the output instead)")
        _positive_int(self.exp_iters, "exp_iters", minimum=0)
        _number(self.exp_lr, "exp_lr", 0.0, 10.0)
        _number(self.exp_reg_weight, "exp_reg_weight", 0.0, 1e6, lo_open=False)
        if not isinstance(self.bn_norm, bool):
            raise ValueError(f"bn_norm must be True or False, got {self.bn_norm!r}")


RECON_CONFIGS = (AdaRoundConfig, BRECQConfig, PWLQAdaRoundConfig, RAPQConfig)
