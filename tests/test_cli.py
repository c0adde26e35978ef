"""The command line: help for every command, clear errors for bad input, eval/bench on a tiny checkpoint."""

import json

import pytest
import torch

from trimformer.checkpoint import save_pruned
from trimformer.cli import build_parser, main
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel


@pytest.mark.parametrize("command", ["finetune", "prune", "eval", "bench", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "missing"), "--data", "imdb"])
    assert code == 2
    assert "error" in capsys.readouterr().err


@pytest.fixture
def tiny_checkpoint(tmp_path, tokenizer):
    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2, vocab_size=32,
                                                           id2label={0: "neg", 1: "pos"},
                                                           label2id={"neg": 0, "pos": 1}))
    pruned = TokenPrunedModel(model, LTPPolicy(3, LTPConfig(final_threshold=0.05)))
    save_pruned(pruned, tmp_path / "ckpt", tokenizer)
    rows = [{"text": "good fun movie the plot", "label": "pos"}, {"text": "bad boring awful", "label": "neg"}] * 8
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "ckpt", data


def test_eval_and_bench_write_json(tiny_checkpoint, tmp_path):
    ckpt, data = tiny_checkpoint
    assert main(["eval", str(ckpt), "--data", str(data), "--eval-data", str(data), "--json",
                 str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= result["accuracy"] <= 100 and result["num_examples"] == 16
    assert main(["bench", str(ckpt), "--data", str(data), "--batch-size", "4", "--num-samples", "8",
                 "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    bench = json.loads((tmp_path / "b.json").read_text())
    for key in ("method", "data", "batch_size", "dense_samples_per_s", "pruned_samples_per_s", "speedup",
                "flops_ratio", "accuracy_dense", "accuracy_pruned"):
        assert key in bench, key
    assert bench["method"] == "ltp" and bench["batch_size"] == 4
    assert bench["speedup"] == pytest.approx(bench["pruned_samples_per_s"] / bench["dense_samples_per_s"])


def test_empty_text_is_refused(tiny_checkpoint, tmp_path, capsys):
    ckpt, _ = tiny_checkpoint
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood movie,pos\n   ,neg\n")
    assert main(["eval", str(ckpt), "--data", str(bad), "--eval-data", str(bad)]) == 2
    assert "empty text" in capsys.readouterr().err
