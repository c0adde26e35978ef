"""Post-training quantization of a checkpoint (text or vision, dense or token-pruned): calibrate, evaluate, save,
report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trimformer.checkpoint import WEIGHTS_FILE, check_output_path, save_pruned
from trimformer.data.batching import calibration_batches
from trimformer.data.images import image_collate
from trimformer.data.text import text_collate
from trimformer.evaluation import evaluate
from trimformer.loading import Loaded, model_resolution
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import (
    BaseQuantConfig,
    ReconFields,
    UniformConfig,
    calibrate,
    check_globs,
    is_quantized,
    quantize_,
    quantize_weight,
)


def fp32_nbytes(model: nn.Module) -> int:
    """Bytes of the model's state dict stored as fp32 (what an unquantized float checkpoint holds)."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict().values():
        if t.data_ptr() in seen and t.numel():
            continue  # tied weights are stored once
        seen.add(t.data_ptr())
        total += t.numel() * (4 if t.is_floating_point() else t.element_size())
    return total


def float_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every nn.Linear / nn.Conv2d weight by module name (taken before quantizing)."""
    return {name: m.weight.detach().clone() for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def weight_mse(model: nn.Module, originals: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(squared error of the quantized weights, of uniform min-max weights at the same bits), summed over layers.

    ``originals`` are the float weights (:func:`float_weights` before ``quantize_``). The uniform reference
    uses each layer's own nominal bits, granularity, bias-correction and power-of-two settings: same bits,
    uniform vs the chosen scheme.
    """
    err = ref = 0.0
    for name, mod in model.named_modules():
        cfg = getattr(mod, "wconfig", None)  # the layer's config, set by quantize_
        if cfg is None or name not in originals:
            continue
        w = originals[name].float()
        uniform = UniformConfig(wbits=cfg.wbits, act=None, per_channel=cfg.per_channel,
                                bias_correction=cfg.bias_correction, pow2_scale=cfg.pow2_scale)
        err += float((mod.weight.float() - w).pow(2).sum())
        ref += float((quantize_weight(w, uniform).dequantize() - w).pow(2).sum())
    return err, ref


def quantize_loaded(
    model: TokenPrunedModel,
    meta: dict[str, Any],
    config: BaseQuantConfig,
    calibration_batches: list[dict[str, torch.Tensor]],
    evaluate_fn: Callable[[TokenPrunedModel], Any],
    out: str | Path,
    source: str,
    tokenizer: Any = None,
    recipe: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Quantize a loaded (possibly pruned) model, calibrate, evaluate before/after, save; returns the report.

    ``evaluate_fn(model)`` returns an object with ``accuracy``, ``flops_ratio`` and ``num_examples``. ``out`` is
    checked first (:func:`~trimformer.checkpoint.check_output_path`: a checkpoint there is replaced only with
    ``overwrite``).
    """
    check_output_path(out, overwrite)
    if is_quantized(model.model):
        raise ValueError(f"{source} is already quantized; quantize the float checkpoint it was made from")
    check_globs(model.model, config)  # before the float evaluation, not after it
    fp = evaluate_fn(model)
    size_fp32 = fp32_nbytes(model)
    originals = float_weights(model.model)
    quantize_(model.model, config)
    if config.act is not None or isinstance(config, ReconFields):  # reconstruction learns during calibrate
        unseen = calibrate(model, calibration_batches)
        if unseen:
            raise ValueError(f"calibration never reached {len(unseen)} quantized layer(s), e.g. {unseen[:3]}")
    quant = evaluate_fn(model)
    err, ref = weight_mse(model.model, originals)
    extra = {k: meta[k] for k in ("resolution", "label_names") if k in meta}
    save_pruned(model, out, tokenizer, extra={**extra, "recipe": {**meta.get("recipe", {}), "quantize": {
        "quantized_from": source, "calibration_batches": len(calibration_batches), **(recipe or {})}}},
        overwrite=overwrite)
    return {
        "scheme": config.scheme,
        "wbits": config.wbits,
        "abits": None if config.act is None else config.act.bits,
        "model": source,
        "method": meta.get("method", "dense"),
        "quant_config": config.to_dict(),
        "accuracy_fp": fp.accuracy,
        "accuracy_quant": quant.accuracy,
        "metrics_fp": getattr(fp, "metrics", {}),
        "metrics_quant": getattr(quant, "metrics", {}),
        "weight_mse_ratio_vs_uniform": err / ref if ref > 0 else float("nan"),
        "size_bytes_fp32": size_fp32,
        "size_bytes_quant": (Path(out) / WEIGHTS_FILE).stat().st_size,
        "flops_ratio": quant.flops_ratio,
        "num_test_examples": quant.num_examples,
        "out": str(out),
    }


def quantize_checkpoint(loaded: Loaded, source: str, config: BaseQuantConfig, calib: Sequence, test: Sequence,
                        out: str | Path, max_length: int = 128, calib_batches: int = 16,
                        batch_size: int = 32, overwrite: bool = False) -> dict[str, Any]:
    """Quantize a loaded text or vision model (dense or pruned) and save it to ``out``.

    Activation ranges come from a seeded sample of ``calib_batches`` batches of ``calib`` (labels unused);
    accuracy is measured on ``test`` before and after. Returns the report (the keys of ``trimformer quantize
    --json``).
    """
    text = loaded.task == "text"
    collate = text_collate(loaded.tokenizer, max_length) if text else image_collate
    batches = calibration_batches(calib, collate, batch_size, calib_batches, seed=0)
    meta = dict(loaded.meta)
    if not text:
        meta["resolution"] = model_resolution(loaded.model, meta)
    recipe = {"max_length": max_length} if text else {}
    return quantize_loaded(loaded.model, meta, config, batches,
                           lambda m: evaluate(m, test, loaded.tokenizer, max_length), out, source, loaded.tokenizer,
                           recipe, overwrite)
