"""The timed variants of ``trimformer.benchmark`` on another runtime: the dense and the pruned model exported to
ONNX Runtime, or compiled with torch.compile; transformers' eager forward stays the reference. The variant names
are the torch benchmark's (``dense``, ``engine_dense``, ``packed``), so every record has the same keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trimformer.export.compiled import compile_pruned
from trimformer.export.onnx_export import trace_to_onnx
from trimformer.export.runtime import run, session
from trimformer.pruned import TokenPrunedModel

RUNTIMES = ("torch", "onnxruntime", "compile")


def runtime_variants(model: TokenPrunedModel, runtime: str, workdir: str | Path,
                     resolution: int | None = None) -> dict[str, Callable[[dict], object]]:
    """``dense`` (transformers' forward), ``engine_dense`` and ``packed`` (the dense and the pruned model on
    ``runtime``: 'onnxruntime' exports both to ``workdir``, sessions without thread spinning; 'compile' runs
    :func:`compile_pruned` with inductor)."""
    if runtime not in RUNTIMES[1:]:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    dense_model = TokenPrunedModel(model.model).eval()  # the same weights, no policy

    def transformers_dense(batch: dict) -> object:
        return model.model(**batch).logits

    if runtime == "compile":  # compile_pruned switches options: a wrapper of its own around the same policy
        pruned = TokenPrunedModel(model.model, model.policy, model.execution).eval()
        dense_run, pruned_run = compile_pruned(dense_model), compile_pruned(pruned)
        return {"dense": transformers_dense, "engine_dense": lambda b: dense_run(**b).logits,
                "packed": lambda b: pruned_run(**b).logits}
    workdir = Path(workdir)
    sessions = {name: session(trace_to_onnx(m, workdir / f"{name}.onnx", resolution=resolution))
                for name, m in (("dense", dense_model), ("pruned", model))}
    return {"dense": transformers_dense, "engine_dense": lambda b: run(sessions["dense"], b),
            "packed": lambda b: run(sessions["pruned"], b)}
