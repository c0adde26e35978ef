"""int8 graphs through ONNX Runtime's quantization tools: dynamic (int8 weights per channel, activations quantized
at run time) or static QDQ (activation ranges calibrated on batches of the model's own data)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

INT8_SCHEMES = ("dynamic", "qdq")


class _Batches:
    """ONNX Runtime's CalibrationDataReader over a list of input dicts (only the graph's inputs are passed)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], names: list[str]):
        self._items: Iterator[dict[str, np.ndarray]] = iter([
            {k: (v.numpy().astype(np.int64) if not v.is_floating_point() else v.numpy().astype(np.float32))
             for k, v in batch.items() if k in names} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_onnx(src: str | Path, dst: str | Path, scheme: str = "dynamic",
                  calibration: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write an int8 copy of the float graph ``src`` to ``dst``: MatMul weights int8 per output channel.

    ``'dynamic'``: ``quantize_dynamic`` (MatMulInteger / DynamicQuantizeLinear kernels, no calibration).
    ``'qdq'``: ``quantize_static`` in QDQ format, activations uint8 with MinMax ranges over ``calibration`` batches.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8 scheme must be one of {INT8_SCHEMES}, got {scheme!r}")
    src, dst = Path(src), Path(dst)
    if scheme == "dynamic":
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        return dst
    if not calibration:
        raise ValueError("int8 'qdq' needs calibration batches (a few batches of the model's inputs)")
    import onnx

    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
    quantize_static(str(src), str(dst), _Batches(calibration, names), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax)
    return dst
