"""``trimformer.quantize_`` and ``trimformer.calibrate``: the quantization verbs on a pruned wrapper or a bare model.

They run :mod:`trimformer.quant` (which knows nothing of pruning) and then rebuild a wrapper's block views, so the
engine runs the quantized layers that replaced the float ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from trimformer import quant
from trimformer.pruned import TokenPrunedModel


def quantize_(model: nn.Module, config: quant.BaseQuantConfig,
              filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Quantize ``model`` (a ``TokenPrunedModel`` or a bare model) in place with ``config`` (``PWLQConfig``,
    ``UniformConfig``, or a reconstruction config) and return it; ``filter_fn(module, name)`` can veto layers."""
    quant.quantize_(model, config, filter_fn)
    if isinstance(model, TokenPrunedModel):
        model.rebuild_views()
    return model


def calibrate(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None = None,
              ) -> list[str]:
    """Calibrate the activation ranges of a quantized ``model`` (wrapper or bare) on ``batches`` and, for a
    reconstruction scheme (``AdaRoundConfig``, ``BRECQConfig``, ``RAPQConfig``, ``PWLQAdaRoundConfig``), learn
    the weights' rounding; returns the names of quantizers that saw no data."""
    if isinstance(model, TokenPrunedModel):
        model.rebuild_views()
    unseen = quant.calibrate(model, batches, forward)
    if isinstance(model, TokenPrunedModel):
        model.rebuild_views()  # reconstruction replaced weights
    return unseen
