"""Post-training quantization: PWLQ (Fang et al., ECCV 2020) and the uniform schemes it is measured against.

Typical use::

    cfg = PWLQConfig(wbits=4, act=ActSpec(bits=8), breakpoint="gaussian", bias_correction=True)
    quantize_(model, cfg)              # weights quantized once, input quantizers installed
    calibrate(model, batches)          # activation ranges (median of top-10 per batch, averaged)
                                       # (+ learned rounding for AdaRoundConfig, BRECQConfig, RAPQConfig, ...)
    save_packed(model, "model.qsafetensors")  # bit-packed codes + per-channel params

One config dataclass per weight scheme (``PWLQConfig``, ``UniformConfig``; shared fields in ``BaseQuantConfig``,
activations in ``ActSpec``); ``HANDLERS`` maps each config type to the code that quantizes with it, and
``config_from_dict`` reads any saved recipe back (``"scheme"`` picks the type).
"""

from .adaround import RoundingGrid, rectified_sigmoid
from .api import ORDER, check_globs, is_quantized, load_quantized_, quantize_, refuse_quantized, select_layers
from .bn_fold import find_conv_bn_pairs, fold_batchnorm_, fold_bn_into
from .calibrate import ActQuantizer, calibration
from .config import ActSpec, BaseQuantConfig, PWLQConfig, UniformConfig
from .handlers import HANDLERS, Encoded, WeightHandler, config_from_dict, config_type, handler_for
from .modules import QuantConv2d, QuantLinear
from .packing import (
    load_packed,
    pack_bits,
    pack_model,
    pack_weight,
    packed_nbytes,
    save_packed,
    split_packed,
    unpack_bits,
    unpack_state_dict,
    unpack_weight,
)
from .pwlq import (
    code_bits,
    fake_quant_pwlq,
    gaussian_breakpoint,
    laplace_breakpoint,
    piece_layout,
    pwlq_decode,
    pwlq_encode,
    pwlq_params,
    search_breakpoints,
)
from .recon_config import AdaRoundConfig, BRECQConfig, PWLQAdaRoundConfig, RAPQConfig, ReconFields
from .recon_stage import calibrate, reconstruct
from .reconstruct import find_units, float_mode
from .uniform import (
    asymmetric_qparams,
    dequantize_symmetric,
    fake_quant_asymmetric,
    fake_quant_symmetric,
    mse_clip_absmax,
    quantize_symmetric,
    symmetric_scale,
)
from .weights import QuantizedWeight, bias_correction_params, fake_quantize_weight, quantize_weight

__all__ = [
    "AdaRoundConfig",
    "BRECQConfig",
    "PWLQAdaRoundConfig",
    "RAPQConfig",
    "ReconFields",
    "RoundingGrid",
    "find_units",
    "float_mode",
    "reconstruct",
    "rectified_sigmoid",
    "ActQuantizer",
    "ActSpec",
    "BaseQuantConfig",
    "Encoded",
    "HANDLERS",
    "PWLQConfig",
    "QuantConv2d",
    "QuantLinear",
    "QuantizedWeight",
    "UniformConfig",
    "WeightHandler",
    "asymmetric_qparams",
    "bias_correction_params",
    "calibrate",
    "calibration",
    "code_bits",
    "config_from_dict",
    "config_type",
    "dequantize_symmetric",
    "fake_quant_asymmetric",
    "fake_quant_pwlq",
    "fake_quant_symmetric",
    "fake_quantize_weight",
    "find_conv_bn_pairs",
    "fold_batchnorm_",
    "fold_bn_into",
    "handler_for",
    "is_quantized",
    "refuse_quantized",
    "check_globs",
    "ORDER",
    "load_quantized_",
    "gaussian_breakpoint",
    "laplace_breakpoint",
    "load_packed",
    "mse_clip_absmax",
    "pack_bits",
    "pack_model",
    "pack_weight",
    "packed_nbytes",
    "piece_layout",
    "pwlq_decode",
    "pwlq_encode",
    "pwlq_params",
    "quantize_",
    "quantize_symmetric",
    "quantize_weight",
    "save_packed",
    "split_packed",
    "search_breakpoints",
    "select_layers",
    "symmetric_scale",
    "unpack_bits",
    "unpack_state_dict",
    "unpack_weight",
]
