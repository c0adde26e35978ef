"""Task metrics from predictions and references, computed by scikit-learn and SciPy (not by hand).

Classification: accuracy, macro-averaged F1 and Matthews correlation (GLUE reports F1 on MRPC/QQP and Matthews
on CoLA). Regression (STS-B style targets): Pearson and Spearman correlations and the mean squared error.
All in percent except the MSE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman", "mse")


def classification_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """accuracy, macro_f1 and matthews in percent (Matthews: -100..100)."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    correct = sum(int(p == y) for p, y in zip(predictions, labels, strict=True))
    return {"accuracy": 100.0 * correct / len(labels),
            "macro_f1": 100.0 * float(f1_score(labels, predictions, average="macro", zero_division=0)),
            "matthews": 100.0 * float(matthews_corrcoef(labels, predictions))}


def regression_metrics(predictions: Sequence[float], targets: Sequence[float]) -> dict[str, float]:
    """pearson and spearman in percent (NaN where no correlation is defined: fewer than two examples, or a
    constant side) and mse."""
    from scipy.stats import pearsonr, spearmanr

    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    constant = len(set(predictions)) < 2 or len(set(targets)) < 2
    pearson = math.nan if constant else 100.0 * float(pearsonr(predictions, targets)[0])
    spearman = math.nan if constant else 100.0 * float(spearmanr(predictions, targets)[0])
    mse = sum((p - t) ** 2 for p, t in zip(predictions, targets, strict=True)) / len(targets)
    return {"pearson": pearson, "spearman": spearman, "mse": mse}
