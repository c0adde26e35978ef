"""Checking an exported graph against the PyTorch model it came from: same kept tokens per block, close logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trimformer.export.graph import KEPT_OUTPUT, signature
from trimformer.export.runtime import run, session
from trimformer.pruned import TokenPrunedModel


def torch_outputs(model: TokenPrunedModel, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The PyTorch model's outputs under the graph's names (packed execution, no gradients)."""
    sig = signature(model)
    with torch.no_grad(), model.options(mode="packed"):
        out = model(**{k: inputs[k] for k in sig.inputs})
    main = out.logits if out.logits is not None else out.last_hidden_state
    return {sig.outputs[0]: main.float().numpy(), KEPT_OUTPUT: out.n_out.round().long().numpy()}


def compare(model: TokenPrunedModel, path: str | Path, inputs: dict[str, torch.Tensor],
            sess: Any = None) -> dict[str, Any]:
    """Run the graph at ``path`` and ``model`` on ``inputs``: the largest logit difference (absolute, and relative to
    the largest logit), the share of rows whose top class agrees, and whether every block kept the same counts."""
    sess = sess or session(path)
    got, want = run(sess, inputs), torch_outputs(model, inputs)
    main = signature(model).outputs[0]
    diff = float(np.abs(got[main] - want[main]).max()) if got[main].size else 0.0
    scale = float(np.abs(want[main]).max()) if want[main].size else 0.0
    result = {"rows": int(want[main].shape[0]), "max_abs_diff": diff, "max_rel_diff": diff / max(scale, 1e-12),
              "kept_equal": bool(np.array_equal(got[KEPT_OUTPUT], want[KEPT_OUTPUT])),
              "kept_tokens": got[KEPT_OUTPUT].tolist()}
    if main == "logits":
        result["top1_agreement"] = float((got[main].argmax(-1) == want[main].argmax(-1)).mean())
    return result


def onnx_accuracy(sess: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Top-1 accuracy (%) of a classifier graph on labelled ``batches``, with the mean share of each input's tokens
    that the last block kept (padding excluded)."""
    correct = total = 0
    kept_share = []
    for batch in batches:
        out = run(sess, batch)
        correct += int((out["logits"].argmax(-1) == batch["labels"].numpy()).sum())
        total += len(batch["labels"])
        lengths = (batch["attention_mask"].sum(1).numpy() if "attention_mask" in batch
                   else np.full(len(batch["labels"]), out[KEPT_OUTPUT][:, 0].max()))
        kept_share.append(out[KEPT_OUTPUT][:, -1] / lengths)
    if not total:
        raise ValueError("no labelled examples to measure the accuracy on")
    return {"accuracy": 100.0 * correct / total, "num_examples": total,
            "last_block_kept_share": float(np.concatenate(kept_share).mean())}
