"""Inference linears on weights pre-packed for oneDNN (CPU, float32).

PyTorch's ``F.linear`` on CPU reads the weight in its plain layout on every call. For weights too large for a
core's cache, oneDNN's linear on a weight packed once into its own layout takes less time: on the 2-core CPU
(``benchmarks/results/linear_kernel.json``) 0.57-0.89x of ``F.linear``'s time for MiniLM's 384x1152, 384x1536
and 1536x384 weights at 8-256 rows. For small weights it is slower (a one-row call costs up to about 20 us
more: 1.02-4.7x for ViT-Ti's 192x192 weight at 1-128 rows), so ``"auto"`` packs only weights of at least
:data:`AUTO_MIN_WEIGHT_ELEMENTS` elements. (At 1,024 rows and more oneDNN was faster for every weight measured;
the rule does not use the row count.) Packing happens once per weight and is cached; a weight changed in place
(its version counter moves) is packed again.

It applies only without gradients, on CPU float32 tensors, for plain ``nn.Linear`` layers (or a stacked weight
whose owner passes its own stamp). Everything else, and the ``"torch"`` kernel, runs ``F.linear``. Select with
:func:`linear_kernel` (context manager) or :func:`set_linear_kernel`; the default is ``"auto"``
(``"onednn"``: pack every weight). Dense baselines inside trimformer (a model with pruning disabled) run the
same kernel, so a speed-up reported against them is pruning's alone.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")
KERNELS = ("auto", "onednn", "torch")
# Under "auto", weights below this size stay on F.linear (see the module docstring).
AUTO_MIN_WEIGHT_ELEMENTS = 1 << 18  # 1 MiB of float32
_STATE = {"kernel": "auto"}
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner module -> (stamp, packed weight)


def onednn_available() -> bool:
    """Whether this PyTorch build has the prepacked oneDNN linear."""
    ops = torch.ops.mkldnn
    return bool(torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
                and hasattr(ops, "_reorder_linear_weight"))


_ONEDNN = onednn_available()


def set_linear_kernel(name: str) -> None:
    """``"auto"`` (oneDNN for weights of at least :data:`AUTO_MIN_WEIGHT_ELEMENTS` elements, where available),
    ``"onednn"`` (every weight; error if unavailable) or ``"torch"`` (``F.linear``)."""
    if name not in KERNELS:
        raise ValueError(f"unknown linear kernel {name!r}: choose one of {', '.join(KERNELS)}")
    if name == "onednn" and not _ONEDNN:
        raise ValueError("this PyTorch build has no prepacked oneDNN linear; use linear kernel 'auto' or 'torch'")
    _STATE["kernel"] = name


def current_linear_kernel() -> str:
    """The kernel selected now (see :func:`set_linear_kernel`)."""
    return _STATE["kernel"]


@contextlib.contextmanager
def linear_kernel(name: str) -> Iterator[None]:
    """Run the enclosed code with linear kernel ``name``, then restore the previous one."""
    previous = current_linear_kernel()
    set_linear_kernel(name)
    try:
        yield
    finally:
        _STATE["kernel"] = previous


def tensor_stamp(*tensors: torch.Tensor) -> tuple | None:
    """Identity of the tensors' current contents (storage, in-place version, dtype, device); None for inference
    tensors, which keep no version counter (a change in place could not be told)."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def cached_for(cache: weakref.WeakKeyDictionary, owner: object, stamp: tuple, build: Callable[[], T]) -> T:
    """``cache``'s value for ``owner`` while it was built under ``stamp`` (:func:`tensor_stamp`); otherwise
    ``build()``, stored under the new stamp. The cache for weights derived at inference (packed, stacked)."""
    entry = cache.get(owner)
    if entry is None or entry[0] != stamp:
        entry = (stamp, build())
        cache[owner] = entry
    return entry[1]


def _prepacked_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    kernel = _STATE["kernel"]
    return (_ONEDNN and kernel != "torch" and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and (kernel == "onednn" or weight.numel() >= AUTO_MIN_WEIGHT_ELEMENTS))


def _run_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object,
                stamp: tuple) -> torch.Tensor:
    """oneDNN's linear on the packing of ``weight`` cached under ``owner`` (where the kernel applies)."""
    packed = cached_for(_PACKED, owner, stamp,
                        lambda: torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object,
                  stamp: tuple | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: [..., in] -> [..., out], on a cached oneDNN packing of ``weight`` when it
    applies. ``owner`` (weak-referenceable) keys the cache; ``stamp`` identifies the weight's contents (None: do
    not cache, run ``F.linear``)."""
    if stamp is None or not _prepacked_applies(x, weight):
        return F.linear(x, weight, bias)
    return _run_packed(x, weight, bias, owner, stamp)


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, through the cached oneDNN packing for a plain ``nn.Linear`` at inference."""
    if type(module) is not nn.Linear or not _prepacked_applies(x, module.weight):
        return module(x)
    weight, bias = module.weight, module.bias
    stamp = tensor_stamp(weight) if bias is None else tensor_stamp(weight, bias)
    return module(x) if stamp is None else _run_packed(x, weight, bias, module, stamp)


def effective_linear_kernel() -> str:
    """What inference linears run on now: ``"onednn"`` (prepacked, every weight), ``"auto"`` (prepacked for
    weights of at least :data:`AUTO_MIN_WEIGHT_ELEMENTS` elements) or ``"torch"`` (``F.linear``)."""
    return "torch" if not _ONEDNN or _STATE["kernel"] == "torch" else _STATE["kernel"]
