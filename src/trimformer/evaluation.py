"""Accuracy and FLOPs of a (pruned) model on a labelled dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from trimformer.data.text import TextDataset, text_collate
from trimformer.pruned import TokenPrunedModel


@dataclass
class EvalResult:
    accuracy: float  # percent
    gflops_per_sample: float
    dense_gflops_per_sample: float
    flops_ratio: float  # pruned / dense, ratio of the means
    kept_tokens_per_layer: list[float]  # mean tokens kept after each layer's decision
    tokens_in_per_layer: list[float]
    mean_length: float
    num_examples: int
    predictions: list[int] = field(default_factory=list, repr=False)
    kept_last_layer: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        out = dict(self.__dict__)
        out.pop("predictions")
        out.pop("kept_last_layer")
        return out


@torch.no_grad()
def evaluate(model: TokenPrunedModel, data: TextDataset, tokenizer, max_length: int = 128,
             batch_size: int = 64, progress: bool = True) -> EvalResult:
    """Run ``model`` in its current mode over ``data``; FLOPs are the analytic counts per sample."""
    model.eval()
    collate = text_collate(tokenizer, max_length)
    correct, preds = 0, []
    flops = dense = 0.0
    kept_sum = in_sum = None
    length_sum = 0.0
    kept_last: list[float] = []
    items = list(zip(data.texts, data.labels, strict=True))
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(items), batch_size), desc="eval", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in collate(items[start:start + batch_size]).items()}
        labels = batch.pop("labels")
        out = model(**batch)
        pred = out.logits.argmax(dim=-1)
        correct += int((pred == labels).sum())
        preds.extend(pred.tolist())
        flops += float(out.flops.sum())
        dense += float(out.dense_flops.sum())
        kept_sum = out.n_out.sum(0) if kept_sum is None else kept_sum + out.n_out.sum(0)
        in_sum = out.n_in.sum(0) if in_sum is None else in_sum + out.n_in.sum(0)
        length_sum += float(batch["attention_mask"].sum())
        kept_last.extend(out.n_out[:, -1].tolist())
    n = len(items)
    return EvalResult(
        accuracy=100.0 * correct / n, gflops_per_sample=flops / n / 1e9, dense_gflops_per_sample=dense / n / 1e9,
        flops_ratio=flops / dense, kept_tokens_per_layer=(kept_sum / n).tolist(),
        tokens_in_per_layer=(in_sum / n).tolist(), mean_length=length_sum / n, num_examples=n,
        predictions=preds, kept_last_layer=kept_last,
    )
