"""``trimformer.export_onnx``: a pruned (or dense, or quantized) model as an ONNX graph with the pruning in it."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trimformer.export.graph import ExportGraph, example_inputs, float_copy, signature
from trimformer.io_utils import OutputPathError
from trimformer.pruned import TokenPrunedModel

OPSET = 17  # ScatterElements with reduction (merges) needs 16


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how the graph compared with the PyTorch model on the check inputs."""

    path: str
    method: str
    inputs: list[str]
    outputs: list[str]
    opset: int
    seconds: float
    size_bytes: int
    int8: str | None = None  # None (float32), 'dynamic' or 'qdq'
    float_path: str | None = None  # the float32 graph the int8 one was made from
    check: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _method(model: TokenPrunedModel) -> str:
    return "dense" if model.policy is None or not model.execution.pruning else model.policy.method


def trace_to_onnx(model: TokenPrunedModel, path: str | Path, *, length: int = 16, resolution: int | None = None,
                  opset: int = OPSET) -> Path:
    """Trace ``model`` (in eval mode, traceable packed execution) to a float32 ONNX file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = float_copy(model).eval()
    graph = ExportGraph(model).eval()
    sig = graph.sig
    example = example_inputs(model, length=length, resolution=resolution)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: the traceable mode decides none
        torch.onnx.export(graph, example, str(path), dynamo=False, input_names=list(sig.inputs),
                          output_names=list(sig.outputs), dynamic_axes=sig.dynamic_axes, opset_version=opset,
                          do_constant_folding=True)
    return path


def export_onnx(model: TokenPrunedModel, path: str | Path, *, int8: str | None = None,
                calibration: list[dict[str, torch.Tensor]] | None = None,
                check_inputs: dict[str, torch.Tensor] | None = None, length: int = 16,
                resolution: int | None = None, opset: int = OPSET, overwrite: bool = False) -> ExportReport:
    """Export ``model`` to ONNX at ``path``; the pruning decision runs in the graph and pruned tokens are removed.

    Batch size (and, for text, the sequence length) are dynamic; images keep the resolution they were traced at
    (``resolution``, default the model config's). Outputs: ``logits`` and ``kept_tokens`` ([batch, blocks], the
    tokens each block kept). ``int8``: None (float32), ``'dynamic'`` (ONNX Runtime's ``quantize_dynamic``, int8
    weights per channel) or ``'qdq'`` (static QDQ with activations calibrated on ``calibration`` batches); the
    float graph is kept next to it as ``<stem>.fp32.onnx``. Quantized trimformer models (PWLQ, uniform) export their
    dequantized weights. ``check_inputs`` (a batch) is run through both and the differences recorded. An existing
    file at ``path`` (or the float graph's) is replaced only with ``overwrite``.
    """
    if not isinstance(model, TokenPrunedModel):
        raise TypeError(f"export_onnx takes a TokenPrunedModel (trimformer.prune / trimformer.load), got "
                        f"{type(model).__name__}; wrap a dense model with trimformer.TokenPrunedModel(model)")
    if int8 not in (None, "dynamic", "qdq"):
        raise ValueError(f"int8 must be None, 'dynamic' or 'qdq', got {int8!r}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"the output path must end in .onnx, got {path}")
    for target in (path, path.with_suffix(".fp32.onnx")) if int8 is not None else (path,):
        if target.is_dir() or (target.exists() and not overwrite):
            raise OutputPathError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it, or "
                                  "choose another output path")
    modes = [(m, m.training) for m in model.modules()]  # restored one by one: a wrapper may be in train mode
    model.eval()                                        # around an eval-mode model, and .train() would recurse
    start = time.perf_counter()
    try:
        float_path = path if int8 is None else path.with_suffix(".fp32.onnx")
        trace_to_onnx(model, float_path, length=length, resolution=resolution, opset=opset)
        if int8 is not None:
            from trimformer.export.quantize import quantize_onnx

            quantize_onnx(float_path, path, int8, calibration)
        seconds = time.perf_counter() - start
        report = ExportReport(str(path), _method(model), list(signature(model).inputs),
                              list(signature(model).outputs), opset, seconds, path.stat().st_size, int8,
                              None if int8 is None else str(float_path))
        if check_inputs is not None:
            from trimformer.export.verify import compare

            report.check = compare(model, path, check_inputs)
    finally:
        for module, training in modes:
            module.training = training
        model.rebuild_views()
    return report
