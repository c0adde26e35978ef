"""``trimformer.evaluate``: task metrics, analytic FLOPs and kept tokens of a (pruned) model, for text and images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from trimformer.data.batching import fixed_batches
from trimformer.data.images import image_collate
from trimformer.data.labels import align_to_model, model_label_names
from trimformer.data.text import text_collate
from trimformer.metrics import classification_metrics, regression_metrics
from trimformer.pruned import TokenPrunedModel


@dataclass
class EvalResult:
    """What :func:`evaluate` measured. Classification: ``accuracy``, ``macro_f1``, ``matthews`` (percent).
    Regression (one output): ``pearson``, ``spearman`` (percent) and ``mse``; ``accuracy`` is None there."""

    accuracy: float | None  # percent; None for regression
    gflops_per_sample: float
    dense_gflops_per_sample: float
    flops_ratio: float  # pruned / dense, ratio of the means
    kept_tokens_per_layer: list[float]  # mean tokens kept after each layer's decision
    tokens_in_per_layer: list[float]
    mean_length: float  # mean real tokens per input (text: tokens; images: patches and prefix tokens)
    num_examples: int
    predictions: list[int] | list[float] = field(default_factory=list, repr=False)
    kept_per_example: list[list[float]] = field(default_factory=list, repr=False)  # [examples][layers] n_out
    task: str = "classification"  # or "regression"
    metrics: dict[str, float] = field(default_factory=dict)  # every metric of the task: result.metrics["macro_f1"]

    def summary(self) -> dict[str, Any]:
        """The scalar and per-layer fields, each metric a key of its own (no per-example lists)."""
        out = dict(self.__dict__)
        out.pop("predictions")
        out.pop("kept_per_example")
        out.update(out.pop("metrics"))
        return out

    @property
    def kept_last_layer(self) -> list[float]:
        """Tokens each example keeps after the last layer."""
        return [kept[-1] for kept in self.kept_per_example]


def _labelled_batches(model: TokenPrunedModel, data: Any, tokenizer: Any, max_length: int,
                      batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
    """Batches with labels from a dataset (text: ``tokenizer`` needed; images) or from ready batches (dicts, or
    (pixel_values, labels) pairs)."""
    if isinstance(data, list) and data and isinstance(data[0], (dict, tuple)):
        return [b if isinstance(b, dict) else {"pixel_values": b[0], "labels": b[1]} for b in data]
    if model.adapter.task == "text":
        if tokenizer is None:
            raise ValueError("evaluating a text model on a dataset needs its tokenizer (tokenizer=...)")
        collate = text_collate(tokenizer, max_length)
    else:
        collate = image_collate
    return fixed_batches(data, collate, batch_size, labels=True)


@torch.no_grad()
def evaluate(model: TokenPrunedModel, data: Sequence | list, tokenizer: Any = None, max_length: int = 128,
             batch_size: int = 64, progress: bool = True) -> EvalResult:
    """Run ``model`` in its current execution options over ``data``: the task's metrics (classification:
    accuracy, macro-F1, Matthews correlation; regression: Pearson, Spearman, MSE), analytic FLOPs per sample
    and kept tokens per layer. ``data``: a ``TextDataset`` (with ``tokenizer``), an image dataset, or a list of
    labelled batches. A dataset's labels are checked against the model's and mapped onto them
    (:func:`trimformer.data.labels.match_labels`)."""
    model.eval()
    data = align_to_model(data, model_label_names(model.model.config))
    batches = _labelled_batches(model, data, tokenizer, max_length, batch_size)
    device = next(model.parameters()).device
    preds, refs, kept_per_example = [], [], []
    flops = dense = length_sum = 0.0
    kept_sum = in_sum = None
    for batch in tqdm(batches, desc="eval", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        out = model(**batch)
        regression = out.logits.shape[-1] == 1  # one output: a regression head
        pred = out.logits.squeeze(-1) if regression else out.logits.argmax(dim=-1)
        preds.extend(pred.tolist())
        refs.extend(labels.tolist())
        flops += float(out.flops.sum())
        dense += float(out.dense_flops.sum())
        kept_sum = out.n_out.sum(0) if kept_sum is None else kept_sum + out.n_out.sum(0)
        in_sum = out.n_in.sum(0) if in_sum is None else in_sum + out.n_in.sum(0)
        length_sum += float(out.lengths.sum())
        kept_per_example.extend(out.n_out.tolist())
    n = len(preds)
    if n == 0:
        raise ValueError("no examples to evaluate")
    if regression and any(isinstance(y, int) for y in refs):
        raise ValueError("a regression model (one output) was given class labels: evaluate it on float targets")
    metrics = regression_metrics(preds, refs) if regression else classification_metrics(preds, refs)
    return EvalResult(
        accuracy=metrics.get("accuracy"), gflops_per_sample=flops / n / 1e9, dense_gflops_per_sample=dense / n / 1e9,
        flops_ratio=flops / dense, kept_tokens_per_layer=(kept_sum / n).tolist(),
        tokens_in_per_layer=(in_sum / n).tolist(), mean_length=length_sum / n, num_examples=n,
        predictions=preds, kept_per_example=kept_per_example,
        task="regression" if regression else "classification", metrics=metrics,
    )
