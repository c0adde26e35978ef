"""trimformer: make pretrained transformers cheaper with learned token pruning and post-training
quantization, measured honestly."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TokenPrunedModel": "trimformer.pruned",
    "PrunedOutput": "trimformer.pruned",
    "LTPConfig": "trimformer.methods",
    "TopKConfig": "trimformer.methods",
    "SaiTConfig": "trimformer.methods",
    "ASViTConfig": "trimformer.methods",
    "EViTConfig": "trimformer.methods",
    "ToMeConfig": "trimformer.methods",
    "ExecutionOptions": "trimformer.engine",
    "save": "trimformer.checkpoint",
    "load": "trimformer.checkpoint",
    "TrainConfig": "trimformer.train.loop",
    "prune": "trimformer.pruning",
    "fit": "trimformer.fitting",
    "finetune_dense": "trimformer.train.finetune",
    "evaluate": "trimformer.evaluation",
    "benchmark": "trimformer.bench",
    "save_pruned": "trimformer.checkpoint",
    "load_pruned": "trimformer.checkpoint",
    "load_model": "trimformer.checkpoint",
    "load_text_data": "trimformer.data.text",
    "load_text_file": "trimformer.data.text",
    "TextDataset": "trimformer.data.text",
    "UnsupportedModelError": "trimformer.adapters",
    "PWLQConfig": "trimformer.quant",
    "UniformConfig": "trimformer.quant",
    "quantize_": "trimformer.quantization",
    "calibrate": "trimformer.quantization",
    "fold_batchnorm_": "trimformer.quant",
    "save_packed": "trimformer.quant",
    "load_packed": "trimformer.quant",
    "export_onnx": "trimformer.export",
    "HeadPruningConfig": "trimformer.heads",
    "prune_heads_": "trimformer.heads",
    "AdaPrunerConfig": "trimformer.structured",
    "structured_prune": "trimformer.structured_pruning",
    "save_structured": "trimformer.structured",
    "load_structured": "trimformer.structured",
    "OFARConfig": "trimformer.structured",
    "save_ofar": "trimformer.structured",
    "load_ofar": "trimformer.structured",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Lazy exports: ``import trimformer`` stays cheap; torch loads on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trimformer' has no attribute {name!r}")
