"""Deployment: ONNX export with the pruning decision in the graph, int8 through ONNX Runtime, and runtime helpers.

Layers inside: ``graph`` (the traced module) -> ``onnx_export`` (``export_onnx``) -> ``quantize`` (int8 graphs) ->
``runtime`` / ``verify`` (sessions, checks against PyTorch); ``compiled`` (torch.compile).
"""

from trimformer.export.compiled import compile_pruned
from trimformer.export.graph import KEPT_OUTPUT, ExportGraph, signature
from trimformer.export.onnx_export import OPSET, ExportReport, export_onnx, trace_to_onnx
from trimformer.export.runtime import run, session
from trimformer.export.verify import compare, onnx_accuracy

__all__ = ["KEPT_OUTPUT", "OPSET", "ExportGraph", "ExportReport", "compare", "compile_pruned", "export_onnx",
           "onnx_accuracy", "run", "session", "signature", "trace_to_onnx"]
