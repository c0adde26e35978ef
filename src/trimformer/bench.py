"""``trimformer.benchmark``, the one benchmark driver: dense vs pruned (packed) vs masked-only, timed in the same
run, interleaved, for text and images."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trimformer.data.batching import fixed_batches, sample_indices
from trimformer.data.images import image_collate
from trimformer.data.text import text_collate, transformers_inputs
from trimformer.envinfo import machine_info
from trimformer.evaluation import EvalResult, evaluate
from trimformer.pruned import TokenPrunedModel


@torch.inference_mode()
def time_variants(variants: dict[str, Callable[[dict], object]], batches: list[dict], repeats: int,
                  warmup: int = 2) -> dict[str, dict[str, float]]:
    """Throughput and per-batch latency of each variant, reporting the median over repetitions.

    The variants are interleaved batch by batch (in an order that rotates from batch to batch), so that a
    burst of load on a shared machine hits every variant alike instead of one variant's whole pass. With
    batches on a GPU, each call is timed up to the end of its GPU work (synchronised before and after).
    Each variant also keeps ``seconds``: every call's time, repeat by repeat and batch by batch, in the same order
    for every variant (what :func:`paired_speedup` and :func:`timing_spread` read).
    """
    sync = _synchronizer(batches)
    for fn in variants.values():
        for batch in batches[:warmup]:
            fn(batch)
    names = list(variants)
    totals: dict[str, list[float]] = {k: [] for k in names}
    per_batch: dict[str, list[float]] = {k: [] for k in names}
    samples = sum(int((b["input_ids"] if "input_ids" in b else b["pixel_values"]).shape[0]) for b in batches)
    for _ in tqdm(range(repeats), desc="timing", leave=False):
        spent = dict.fromkeys(names, 0.0)
        for i, batch in enumerate(batches):
            for name in names[i % len(names):] + names[:i % len(names)]:
                sync()
                start = time.perf_counter()
                variants[name](batch)
                sync()
                elapsed = time.perf_counter() - start
                spent[name] += elapsed
                per_batch[name].append(elapsed)
        for name in names:
            totals[name].append(spent[name])
    return {name: {"samples_per_s": samples / statistics.median(totals[name]),
                   "latency_ms_median": 1000 * statistics.median(per_batch[name]),
                   "latency_ms_p90": 1000 * sorted(per_batch[name])[int(0.9 * (len(per_batch[name]) - 1))],
                   "seconds": tuple(per_batch[name])}
            for name in variants}


QUIET_SPREAD = 0.10  # a timing spread above this (10%) marks the machine as busy during the measurement


def paired_speedup(speed: dict[str, dict], name: str, base: str) -> float:
    """The median, over every (repeat, batch) pair, of ``base``'s time over ``name``'s on the same batch, timed
    back to back by :func:`time_variants`: a burst of load that hits one pair moves one ratio, not the median."""
    pairs = list(zip(speed[base]["seconds"], speed[name]["seconds"], strict=True))
    if not pairs:
        raise ValueError("no timed calls to pair: time at least one batch")
    return statistics.median(b / n for b, n in pairs)


def timing_spread(speed: dict[str, dict], name: str, num_batches: int) -> float | None:
    """How steady ``name``'s timings were: for each batch, the range of its times over the repeats relative to
    their median; the median over the batches. About 0.01-0.05 on a quiet machine; above :data:`QUIET_SPREAD`
    the machine was busy and every timing of the run is suspect. None with a single repeat (nothing to compare)."""
    seconds = speed[name]["seconds"]
    if num_batches < 1 or len(seconds) % num_batches:
        raise ValueError(f"{len(seconds)} timings do not split into repeats of {num_batches} batches")
    repeats = len(seconds) // num_batches
    if repeats < 2:
        return None
    per_batch = [seconds[i::num_batches] for i in range(num_batches)]
    return statistics.median((max(t) - min(t)) / statistics.median(t) for t in per_batch)


DENSE_VARIANTS = ("dense", "engine_dense")


def _synchronizer(batches: list[dict]) -> Callable[[], None]:
    """A function that waits for the GPU when the batches live on one, else does nothing."""
    first = next((v for v in batches[0].values() if isinstance(v, torch.Tensor)), None) if batches else None
    if first is not None and first.device.type == "cuda":
        return lambda: torch.cuda.synchronize(first.device)
    return lambda: None


def speed_variants(model: TokenPrunedModel, masked: bool = True) -> dict[str, Callable[[dict], object]]:
    """dense: the unmodified transformers forward (its default attention); engine_dense: trimformer's block loop
    with pruning off (the same linear kernel as the pruned model); packed / masked: pruned."""

    def dense(batch: dict) -> object:
        return model.model(**transformers_inputs(batch)).logits

    def engine_dense(batch: dict) -> object:
        with model.options(mode="packed", pruning=False):
            return model(**batch).logits

    def packed(batch: dict) -> object:
        with model.options(mode="packed"):
            return model(**batch).logits

    def masked_run(batch: dict) -> object:
        with model.options(mode="masked"):
            return model(**batch).logits

    variants = {"dense": dense, "engine_dense": engine_dense, "packed": packed}
    if masked:
        variants["masked"] = masked_run
    return variants


def check_benchable(checkpoint: str | Path, meta: dict) -> None:
    """bench compares a token-reduced model with its dense self: refuse a dense checkpoint clearly."""
    if meta.get("method", "dense") == "dense":
        what = "a quantized dense" if meta.get("quant_config") else "a dense"
        raise ValueError(f"{checkpoint} is {what} model: bench compares a token-pruned checkpoint with its dense "
                         "self (quantization is simulated in float, so it has no speed of its own); use eval")


def fastest_dense(speed: dict[str, dict[str, float]], dense: tuple[str, ...] = DENSE_VARIANTS) -> str:
    """The faster of the dense variants timed (by throughput; ``dense`` names them, transformers' forward first).
    Speed-ups are reported against it, so that what trimformer's engine gains on the dense model too (e.g. its
    linear kernel) never counts as pruning's."""
    return max((n for n in dense if n in speed), key=lambda n: speed[n]["samples_per_s"])


def speedups(speed: dict[str, dict[str, float]], name: str = "packed",
             dense: tuple[str, ...] = DENSE_VARIANTS) -> dict[str, float | str]:
    """Throughput and median-latency speed-ups of variant ``name`` against the fastest dense variant (and,
    for reference, against the transformers forward alone, ``dense[0]``), with that variant's throughput."""
    base = fastest_dense(speed, dense)
    dense_latency = min(speed[n]["latency_ms_median"] for n in dense if n in speed)
    return {"dense_baseline": base, "dense_samples_per_s": speed[base]["samples_per_s"],
            "speedup": speed[name]["samples_per_s"] / speed[base]["samples_per_s"],
            "latency_speedup": dense_latency / speed[name]["latency_ms_median"],
            "speedup_vs_transformers": speed[name]["samples_per_s"] / speed[dense[0]]["samples_per_s"]}


def _method_meta(model: TokenPrunedModel) -> dict[str, Any]:
    """The method, its config and any quantization recipe of ``model`` (what a record must name)."""
    meta: dict[str, Any] = {"method": model.policy.method if model.policy is not None else "dense",
                            "method_config": model.policy.config().to_dict() if model.policy is not None else None}
    quant = getattr(model, "trimformer_quant_config", None) or getattr(model.model, "trimformer_quant_config", None)
    if quant:  # both variants run the same fake-quant weights; the ratio is pruning's
        meta["quant_config"] = quant
    return meta


def speed_record(speed: dict[str, dict[str, float]], counts: EvalResult, model: TokenPrunedModel) -> dict:
    """The keys every benchmark record shares, from timed variants and an evaluation of the pruned model.
    ``dense_samples_per_s`` and ``speedup`` refer to the fastest dense variant (:func:`fastest_dense`); every
    execution option that changes timing is recorded, with the thread count."""
    ratios = speedups(speed)
    record = {
        **_method_meta(model),
        "pruned_samples_per_s": speed["packed"]["samples_per_s"], **ratios,
        "transformers_dense_samples_per_s": speed["dense"]["samples_per_s"],
        "engine_dense_samples_per_s": speed["engine_dense"]["samples_per_s"],
        "linear_kernel": model.execution.effective_linear_kernel,
        "execution": model.execution.to_dict(), "threads": torch.get_num_threads(),
        "latency_ms": {k: v["latency_ms_median"] for k, v in speed.items()},
        "latency_ms_p90": {k: v["latency_ms_p90"] for k, v in speed.items()},
        "gflops_dense": counts.dense_gflops_per_sample, "gflops_pruned": counts.gflops_per_sample,
        "flops_ratio": counts.flops_ratio, "kept_tokens_per_layer": counts.kept_tokens_per_layer,
        "mean_length": counts.mean_length, "machine": machine_info(),
        "speedup_over_flops_reduction": ratios["speedup"] * counts.flops_ratio,
    }
    if "masked" in speed:
        record.update(masked_samples_per_s=speed["masked"]["samples_per_s"],
                      masked_speedup=speedups(speed, "masked")["speedup"])
    return record


def benchmark(model: TokenPrunedModel, data: Sequence, batch_size: int = 32, *, tokenizer: Any = None,
              max_length: int = 128, num_samples: int = 256, repeats: int = 3, accuracy: bool = True,
              accuracy_limit: int | None = None, seed: int = 0, masked: bool | None = None,
              runtime: str = "torch") -> dict:
    """``trimformer.benchmark``: the pruned model against its dense self, timed in the same run, interleaved.

    Times transformers' own forward, the engine with pruning off, the pruned model packed (and masked: default for
    text) on a seeded sample of ``num_samples`` examples of ``data`` (a ``TextDataset`` with its ``tokenizer``, or
    an image dataset) at ``batch_size``, in the model's execution options; counts FLOPs and kept tokens on the same
    sample; with ``accuracy``, scores pruned and dense on ``accuracy_limit`` examples (all by default). Returns the
    record (the keys of ``trimformer bench --json``), with ``speedup_paired`` (:func:`paired_speedup`) and
    ``dense_spread`` (:func:`timing_spread`: above :data:`QUIET_SPREAD`, the machine was busy). ``runtime``:
    'torch' (trimformer's engine), 'onnxruntime' (dense and pruned exported, ``trimformer.export_onnx``) or
    'compile' (``torch.compile``, inductor) for the engine_dense and packed variants (no masked variant there);
    FLOPs, counts and accuracy come from the PyTorch model, which the exported graph matches
    (tests/test_export.py).
    """
    if model.policy is None:
        raise ValueError("benchmark compares a token-pruned model with its dense self: prune the model first "
                         "(trimformer.prune), or use trimformer.evaluate for a dense one")
    text = model.adapter.task == "text"
    if text and tokenizer is None:
        raise ValueError("benchmarking a text model needs its tokenizer (tokenizer=...)")
    if batch_size < 1 or num_samples < 1 or repeats < 1:
        raise ValueError(f"batch_size, num_samples and repeats must be >= 1, got {batch_size}, {num_samples}, "
                         f"{repeats}")
    model.eval()
    collate = text_collate(tokenizer, max_length) if text else image_collate
    timed = sample_indices(len(data), num_samples, seed)
    batches = fixed_batches(data, collate, batch_size, indices=timed)
    if runtime == "torch":
        variants = speed_variants(model, masked=text if masked is None else masked)
        speed = time_variants(variants, batches, repeats)
    else:
        import tempfile

        from trimformer.export.variants import runtime_variants

        with tempfile.TemporaryDirectory() as workdir:
            resolution = None if text else int(batches[0]["pixel_values"].shape[-1])
            speed = time_variants(runtime_variants(model, runtime, workdir, resolution), batches, repeats)
    counts = evaluate(model, fixed_batches(data, collate, batch_size, labels=True, indices=timed), progress=False)
    base = fastest_dense(speed)
    record = {"runtime": runtime, "batch_size": batch_size, "num_samples_timed": len(timed), "repeats": repeats,
              **({"max_length": max_length} if text else {}), **speed_record(speed, counts, model),
              "speedup_paired": paired_speedup(speed, "packed", base),
              "dense_spread": timing_spread(speed, base, len(batches))}
    if hasattr(model.policy, "level"):
        record["level"] = model.policy.level
    if accuracy:
        scored = fixed_batches(data, collate, 64, labels=True,
                               indices=sample_indices(len(data), accuracy_limit or len(data), seed))
        pruned_eval = evaluate(model, scored)
        with model.options(pruning=False):
            dense_eval = evaluate(model, scored)
        record.update(accuracy_dense=dense_eval.accuracy, accuracy_pruned=pruned_eval.accuracy,
                      metrics_dense=dense_eval.metrics, metrics_pruned=pruned_eval.metrics,
                      num_eval_examples=pruned_eval.num_examples)
    return record
