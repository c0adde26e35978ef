"""Raw pixel values of any dtype -> float32 intensities in [0, 1], by the dtype's meaning (never guessed)."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import torch

_INT_RANGES = MappingProxyType({torch.uint8: 255.0, torch.uint16: 65535.0})
FLOAT_SLACK = 1e-3  # float pixels this far outside [0, 1] (resampling overshoot) are clipped, farther is an error


def to_unit_range(pixels: torch.Tensor | np.ndarray, what: str = "image") -> torch.Tensor:
    """uint8 (0..255) and uint16 (0..65535) pixels divided by their maximum, bool as 0/1, float pixels kept (they
    must lie in [0, 1]); any other dtype, NaN/inf, or floats outside [0, 1] raise ValueError naming ``what``.

    Returns a float32 tensor of the same shape."""
    if isinstance(pixels, np.ndarray):
        if pixels.dtype == np.uint16:  # torch.from_numpy reads uint16 only in recent versions
            return torch.from_numpy(pixels.astype(np.float32) / 65535.0)
        if not (np.issubdtype(pixels.dtype, np.number) or pixels.dtype == np.bool_):
            raise ValueError(f"{what}: pixel dtype {pixels.dtype} is not numeric")
        pixels = np.ascontiguousarray(pixels)
        pixels = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())
    dtype = pixels.dtype
    if dtype == torch.bool:
        return pixels.to(torch.float32)
    if dtype in _INT_RANGES:
        return pixels.to(torch.float32) / _INT_RANGES[dtype]
    if not dtype.is_floating_point:
        raise ValueError(f"{what}: {str(dtype).removeprefix('torch.')} pixels have no known range; give uint8 "
                         "(0..255), uint16 (0..65535) or floats in [0, 1]")
    x = pixels.to(torch.float32)
    if x.numel() == 0:
        return x
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
        raise ValueError(f"{what}: float pixels span [{low:g}, {high:g}], but float images are read as intensities "
                         "in [0, 1]; divide by 255 (8-bit values) or give the integer array (uint8 / uint16)")
    return x.clamp(0.0, 1.0)
