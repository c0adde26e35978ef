"""Fake-quant layers: nn.Linear / nn.Conv2d subclasses whose weight is quantized once at construction and
whose input goes through a calibrated :class:`ActQuantizer`. State-dict keys of the weight/bias are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .calibrate import ActQuantizer
from .config import ActSpec, BaseQuantConfig
from .weights import QuantizedWeight, quantize_weight


class _QuantMixin:
    """Shared construction and forward of the fake-quant layers; subclasses say how to build an empty one."""

    qweight: QuantizedWeight
    wconfig: BaseQuantConfig  # the layer's config (``wbits`` resolved for it)
    input_quant: ActQuantizer | None
    float_weight: torch.Tensor | None  # kept (not saved) until reconstruction has used it
    use_float: bool  # run as the float layer (float weight, no input quantizer): reconstruction targets
    # a weight that replaces the quantized one: the learned rounding's while reconstruction trains it, the
    # float one while a reconstruction scheme calibrates its activation ranges
    soft_weight: Callable[[], torch.Tensor] | None

    @classmethod
    def _empty_like(cls, mod: nn.Module) -> _QuantMixin:
        """An uninitialised (meta device) layer of ``mod``'s shape."""
        raise NotImplementedError

    @classmethod
    def from_float(
        cls,
        mod: nn.Module,
        wconfig: BaseQuantConfig,
        aspec: ActSpec | None,
        name: str = "",
        qweight: QuantizedWeight | None = None,
    ) -> _QuantMixin:
        """Quantized copy of ``mod`` (``qweight``: use these codes instead of quantizing ``mod.weight``)."""
        new = cls._empty_like(mod)
        new._install(mod, wconfig, aspec, name, qweight)
        new.train(mod.training)  # type: ignore[attr-defined]
        return new

    def _install(
        self,
        src: nn.Module,
        wconfig: BaseQuantConfig,
        aspec: ActSpec | None,
        name: str,
        qweight: QuantizedWeight | None,
    ) -> None:
        assert isinstance(self, nn.Module)
        with torch.no_grad():
            self.qweight = quantize_weight(src.weight, wconfig) if qweight is None else qweight
            if tuple(self.qweight.shape) != tuple(src.weight.shape):
                raise ValueError(
                    f"quantized weight of {name or 'a layer'} has shape {tuple(self.qweight.shape)}, the layer "
                    f"expects {tuple(src.weight.shape)}: the checkpoint does not belong to this model"
                )
            deq = self.qweight.dequantize().to(src.weight.device)
        self.wconfig = wconfig
        keep = qweight is None and getattr(wconfig, "iters", None) is not None  # a reconstruction scheme
        self.float_weight = src.weight.detach().clone() if keep else None
        self.folded_bn_weight = getattr(src, "folded_bn_weight", None)
        self.use_float = False
        self.soft_weight = None
        self.weight = nn.Parameter(deq, requires_grad=False)
        self.bias = src.bias
        self.input_quant = ActQuantizer(aspec, name) if aspec is not None else None
        if self.input_quant is not None:
            self.input_quant.to(src.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_float:
            if self.float_weight is None:
                raise RuntimeError("float weights are gone (already reconstructed or loaded from a checkpoint)")
            return self.forward_with(x, self.float_weight)
        if self.input_quant is not None:
            x = self.input_quant(x)
        return self.forward_with(x, self.weight if self.soft_weight is None else self.soft_weight())

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The float module's computation on ``weight``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w={self.wconfig.scheme}{self.wconfig.wbits}"  # type: ignore[misc]


class QuantLinear(_QuantMixin, nn.Linear):
    """nn.Linear with a quantized weight and an optional input activation quantizer."""

    @classmethod
    def _empty_like(cls, mod: nn.Linear) -> QuantLinear:
        return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d (any groups, incl. depthwise) with a quantized weight and optional input quantizer."""

    @classmethod
    def _empty_like(cls, mod: nn.Conv2d) -> QuantConv2d:
        return cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                   dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None,
                   padding_mode=mod.padding_mode, device="meta")

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, weight, self.bias)


QUANT_MODULES: dict[type[nn.Module], type[_QuantMixin]] = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}
