"""Inference linears on weights pre-packed for oneDNN (CPU, float32), with caches owned by the model.

PyTorch's ``F.linear`` on CPU reads the weight in its plain layout on every call. For weights too large for a
core's cache, oneDNN's linear on a weight packed once into its own layout takes less time: on the 2-core CPU
(``benchmarks/results/linear_kernel.json``) 0.63-0.81x of ``F.linear``'s time for MiniLM's 384x1152, 384x1536
and 1536x384 weights at 8-256 rows. For small weights it is slower (a one-row call costs up to about 20 us
more: 1.44-3.32x for ViT-Ti's 192x192 weight at 1-128 rows), so ``"auto"`` packs only weights of at least
:data:`AUTO_MIN_WEIGHT_ELEMENTS` elements. Packing happens once per weight and is cached in a
:class:`WeightCache` that belongs to the model; a weight changed in place (its version counter moves) is packed
again. It applies only without gradients, on CPU float32 tensors, for plain ``nn.Linear`` layers (or a stacked
weight whose owner passes its own stamp); everything else, and the ``"torch"`` kernel, runs ``F.linear``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.engine import onednn

T = TypeVar("T")
AUTO_MIN_WEIGHT_ELEMENTS = 1 << 18  # 1 MiB of float32: smaller weights stay on F.linear under "auto"


def tensor_stamp(*tensors: torch.Tensor) -> tuple | None:
    """Identity of the tensors' current contents (storage, in-place version, dtype, device); None for inference
    tensors, which keep no version counter (a change in place could not be told)."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class WeightCache:
    """Weights derived at inference (oneDNN packings, stacked q/k/v), keyed weakly by the module they serve and
    valid while the stamp (:func:`tensor_stamp`) of the tensors they came from is unchanged."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def holds(self, owner: object, kind: str = "") -> bool:
        """Whether a value of ``kind`` is cached for ``owner``."""
        return kind in self._entries.get(owner, {})

    def get(self, owner: object, stamp: tuple, build: Callable[[], T], kind: str = "") -> T:
        """The value cached for (``owner``, ``kind``) under ``stamp``; otherwise ``build()``, stored."""
        slots = self._entries.get(owner)
        if slots is None:
            slots = self._entries[owner] = {}
        entry = slots.get(kind)
        if entry is None or entry[0] != stamp:
            entry = slots[kind] = (stamp, build())
        return entry[1]


class Linears:
    """The linear kernel of one forward (from the model's options) over the model's :class:`WeightCache`."""

    __slots__ = ("kernel", "cache", "traceable", "_packs")

    def __init__(self, kernel: str, cache: WeightCache, use_onednn: bool = onednn.AVAILABLE,
                 traceable: bool = False) -> None:
        self.kernel = kernel
        self.cache = cache
        self.traceable = traceable  # derived weights are computed in the graph, never cached (no stamps to read)
        self._packs = use_onednn and kernel != "torch" and not traceable

    def applies(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether ``x @ weight.T`` runs on a prepacked weight."""
        return (self._packs and not torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype == torch.float32 and weight.dtype == torch.float32
                and (self.kernel == "onednn" or weight.numel() >= AUTO_MIN_WEIGHT_ELEMENTS))

    def _run_packed(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object,
                    stamp: tuple) -> torch.Tensor:
        packed = self.cache.get(owner, stamp, lambda: onednn.pack_weight(weight), kind="onednn")
        return onednn.packed_linear(x, packed, bias)

    def stacked(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object,
                stamp: tuple | None) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` for a derived weight (``owner`` keys its cache, ``stamp`` its contents;
        None: do not cache)."""
        if stamp is None or not self.applies(x, weight):
            return F.linear(x, weight, bias)
        return self._run_packed(x, weight, bias, owner, stamp)

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``, through the cached oneDNN packing for a plain ``nn.Linear`` at inference."""
        if type(module) is not nn.Linear or not self.applies(x, module.weight):
            return module(x)
        weight, bias = module.weight, module.bias
        stamp = tensor_stamp(weight) if bias is None else tensor_stamp(weight, bias)
        return module(x) if stamp is None else self._run_packed(x, weight, bias, module, stamp)
