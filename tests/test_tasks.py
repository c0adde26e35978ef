"""Regression targets (STS-B style) and per-task metrics: MSE training on one output, Pearson/Spearman for
regression, accuracy/macro-F1/Matthews for classification, through every verb and the CLI."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import trimformer
from trimformer.metrics import classification_metrics, regression_metrics
from trimformer.pruned import task_loss
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert


def test_classification_metrics_match_their_definitions():
    m = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0])
    assert m["accuracy"] == 75.0
    assert m["macro_f1"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    assert m["matthews"] == pytest.approx(100 * 2 / math.sqrt(12))


def test_regression_metrics_pearson_and_spearman():
    m = regression_metrics([1.0, 2.0, 3.0, 10.0], [0.5, 1.0, 1.5, 2.0])
    assert m["spearman"] == pytest.approx(100.0) and m["pearson"] < 99.0
    assert m["mse"] == pytest.approx(sum((p - t) ** 2 for p, t in zip([1, 2, 3, 10], [0.5, 1, 1.5, 2],
                                                                    strict=True)) / 4)
    assert math.isnan(regression_metrics([1.0, 1.0], [0.0, 2.0])["pearson"])


def test_one_output_trains_with_mse_like_transformers():
    model = tiny_bert(num_labels=1)
    logits, targets = torch.randn(5, 1), torch.randn(5)
    assert torch.equal(task_loss(logits, targets, model.config), F.mse_loss(logits.squeeze(-1), targets))
    batch = {"input_ids": torch.randint(5, 30, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    wrapped = trimformer.prune(model, trimformer.LTPConfig(target_flops=None))
    with torch.no_grad(), wrapped.pruning_disabled():
        ours = wrapped(**batch, labels=torch.tensor([0.5, 1.5, -1.0])).loss
        theirs = model(**batch, labels=torch.tensor([0.5, 1.5, -1.0])).loss  # transformers picks MSE itself
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("regression", [False, True], ids=["pair-classes", "pair-regression"])
def test_every_verb_on_pairs(regression):
    data = synthetic_text_data(32, seed=1, pairs=True, regression=regression)
    tokenizer = make_tokenizer()
    model = tiny_bert(num_labels=1 if regression else 2, vocab_size=32)
    pruned = trimformer.prune(model, trimformer.LTPConfig(target_flops=0.6, soft_steps=2, hard_steps=2,
                                                          calibration_batches=2))
    trimformer.fit(pruned, data, trimformer.TrainConfig(batch_size=8, max_length=48), tokenizer=tokenizer)
    result = trimformer.evaluate(pruned, data, tokenizer, max_length=48)
    assert result.task == ("regression" if regression else "classification")
    if regression:
        assert result.accuracy is None and set(result.metrics) == {"pearson", "spearman", "mse"}
        assert all(isinstance(p, float) for p in result.predictions)
    else:
        assert set(result.metrics) == {"accuracy", "macro_f1", "matthews"}
        assert result.accuracy == result.metrics["accuracy"]
    assert result.flops_ratio < 1.0 and "pearson" in result.summary() if regression else "matthews" in result.summary()
    record = trimformer.benchmark(pruned, data, batch_size=8, tokenizer=tokenizer, num_samples=8, repeats=1,
                                  max_length=48)
    assert set(record["metrics_pruned"]) == set(result.metrics)
    trimformer.quantize_(pruned.model, trimformer.UniformConfig(wbits=8, act=None))
    assert trimformer.evaluate(pruned, data, tokenizer, max_length=48).task == result.task


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_cli_chain_on_a_regression_pair_csv(tmp_path):
    """A new user's path: a CSV of sentence pairs with similarity scores under their own column names (bench is
    left to the API test above: every subprocess pays the torch import)."""
    base = tmp_path / "base"
    tiny_bert(num_labels=2, vocab_size=32).save_pretrained(base)
    make_tokenizer().save_pretrained(base)
    data = synthetic_text_data(32, seed=2, pairs=True, regression=True)
    path = tmp_path / "sts.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        writer.writerows(zip(data.texts, data.text_pairs, data.labels, strict=True))
    cols = ["--data", str(path), "--columns", "sentence1,sentence2,score"]
    ft, pr, q = tmp_path / "ft", tmp_path / "pr", tmp_path / "q"
    steps = ["--batch-size", "8", "--max-length", "48"]
    run = _cli("finetune", "--model", str(base), *cols, "--out", str(ft), "--epochs", "1", *steps)
    assert run.returncode == 0, run.stderr
    finetuned, _ = trimformer.load(ft)
    assert finetuned.config.num_labels == 1 and finetuned.config.problem_type == "regression"
    run = _cli("prune", "--model", str(ft), *cols, "--out", str(pr), "--soft-steps", "2", "--hard-steps", "2",
               "--target-flops", "0.7", *steps)
    assert run.returncode == 0, run.stderr
    run = _cli("eval", str(pr), *cols, "--max-length", "48", "--json", str(tmp_path / "e.json"))
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["task"] == "regression" and {"pearson", "spearman", "mse"} <= set(result)
    run = _cli("quantize", str(pr), *cols, "--out", str(q), "--calib-batches", "1", "--max-length", "48")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert set(report["metrics_quant"]) == {"pearson", "spearman", "mse"}
    # a classification file on the regression model is refused, naming both sides
    labels = tmp_path / "labels.csv"
    labels.write_text("sentence1,sentence2,score\na good,fun,yes\nbad,awful,no\n")
    run = _cli("eval", str(pr), "--data", str(labels), "--columns", "sentence1,sentence2,score")
    assert run.returncode == 2 and "regression model" in run.stderr and "Traceback" not in run.stderr
