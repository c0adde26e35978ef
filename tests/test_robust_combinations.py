"""Stages in the wrong order are refused up front with the right order (finetune -> prune -> quantize), instead of
writing an unloadable checkpoint or silently dropping the pruning or the quantization; quantizing a pruned
checkpoint stays supported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trimformer
from trimformer.checkpoint import save, save_pruned
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import UniformConfig, quantize_
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert
from trimformer.train.loop import TrainConfig

ORDER = "finetune -> prune -> quantize"


def run_cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _labelled_bert(**kw):
    return tiny_bert(num_labels=2, vocab_size=32, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}, **kw)


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[str, Path]:
    tokenizer = make_tokenizer()
    quantized = quantize_(_labelled_bert(), UniformConfig(act=None))
    save(quantized, tmp_path / "quantized", processor=tokenizer)
    save_pruned(TokenPrunedModel(_labelled_bert(), LTPPolicy(3, LTPConfig())), tmp_path / "pruned", tokenizer)
    rows = [{"text": "good fun movie the plot", "label": "pos"}, {"text": "bad boring awful", "label": "neg"}] * 8
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return {"quantized": tmp_path / "quantized", "pruned": tmp_path / "pruned", "data": tmp_path / "data.jsonl"}


@pytest.mark.parametrize("command,source", [("prune", "quantized"), ("finetune", "quantized"),
                                            ("finetune", "pruned")])
def test_cli_refuses_a_stage_out_of_order(checkpoints, tmp_path: Path, command: str, source: str) -> None:
    out = tmp_path / "out"
    result = run_cli(command, "--model", checkpoints[source], "--data", checkpoints["data"], "--batch-size", "4",
                     *(["--method", "topk", "--hard-steps", "1"] if command == "prune" else ["--epochs", "0.1"]),
                     "--out", out)
    assert result.returncode == 2, result.stderr[-2000:]
    assert ORDER in result.stderr and str(checkpoints[source]) in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_api_refuses_pruning_fitting_or_finetuning_a_quantized_model() -> None:
    quantized = quantize_(tiny_bert(), UniformConfig(act=None))
    with pytest.raises(ValueError, match=ORDER):
        trimformer.prune(quantized, LTPConfig())
    pruned_then_quantized = trimformer.prune(tiny_bert(), LTPConfig(soft_steps=1, hard_steps=1))
    quantize_(pruned_then_quantized.model, UniformConfig(act=None))
    data = synthetic_text_data(16)
    with pytest.raises(ValueError, match=ORDER):
        trimformer.fit(pruned_then_quantized, data, TrainConfig(batch_size=4), tokenizer=make_tokenizer())
    from trimformer.data.text import text_collate

    with pytest.raises(ValueError, match=ORDER):
        trimformer.finetune_dense(quantized, data, text_collate(make_tokenizer(), 16), TrainConfig(batch_size=4), 1)
