"""Clear errors instead of tracebacks for a user's own mistakes: corrupt model folders, a trimformer.json of the
wrong shape, a local path that does not exist (no hub retries), quantization globs that select nothing, NaN
weights, a diverging run; each message names the file or option and says what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trimformer.checkpoint import CheckpointError, load, load_model, save
from trimformer.quant import UniformConfig, quantize_
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert


def run_cli(*args: object, offline: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _clear(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr[-3000:]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rows = [{"text": "good fun movie", "label": "neg" if i % 2 else "pos"} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "data.jsonl"


def _hf_folder(path: Path) -> Path:
    tiny_bert(num_labels=2, vocab_size=32, id2label={0: "neg", 1: "pos"},
              label2id={"neg": 0, "pos": 1}).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def test_cli_corrupt_weights_or_config_in_a_model_folder(tmp_path: Path, data_file: Path) -> None:
    folder = _hf_folder(tmp_path / "dense")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _clear(run_cli("eval", folder, "--data", data_file), str(folder), "corrupt")
    (folder / "config.json").write_text("{broken")
    _clear(run_cli("eval", folder, "--data", data_file), str(folder / "config.json"), "unreadable")


@pytest.mark.parametrize("change,match", [
    ({"method_config": "fast"}, "method_config must be an object"),
    ({"method": 5}, "method must be a method name"),
    ({"mode": "sideways"}, "mode must be 'packed' or 'masked'"),
    ({"label_names": "pos,neg"}, "label_names must be a list of strings"),
    ({"resolution": "big"}, "resolution must be a positive integer"),
    ({"files": {"model.safetensors": 5}}, "files record"),
    ({"method": "ltp", "method_config": {"final_threshold": "high"}}, "the ltp config"),
])
def test_a_trimformer_json_of_the_wrong_shape_is_a_clear_error(tmp_path: Path, change: dict, match: str) -> None:
    save(tiny_bert(), tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "trimformer.json").read_text())
    (tmp_path / "ckpt" / "trimformer.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(CheckpointError, match=match):
        load(tmp_path / "ckpt")


def test_cli_a_local_path_that_does_not_exist_fails_at_once(tmp_path: Path, data_file: Path) -> None:
    """Without HF_HUB_OFFLINE: the path is never sent to the hub (which retried for 30 s, then blamed the network)."""
    _clear(run_cli("prune", "--model", "./no-such-model", "--data", data_file, "--out", tmp_path / "o",
                   offline=False), "./no-such-model not found")


@pytest.mark.parametrize("name,local", [("bert-base-uncased", False), ("google/vit-base-patch16-224", False),
                                        ("./model", True), ("/abs/model", True), ("~/model", True),
                                        ("runs/a/model", True), ("..", True), ("a b", True)])
def test_what_counts_as_a_local_path(name: str, local: bool) -> None:
    from trimformer.checkpoint.sources import looks_like_path

    assert looks_like_path(name) is local


def test_api_a_missing_local_path_is_file_not_found_at_once(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("./no/such/model", "no/such/model"):
        start = time.monotonic()
        with pytest.raises(FileNotFoundError, match="not found"):
            load_model(name)
        assert time.monotonic() - start < 5


@pytest.mark.parametrize("kwargs,match", [
    ({"exclude": ("clasifier",)}, r"exclude glob 'clasifier' \(--exclude\) selects no layer"),
    ({"layer_wbits": {"*.dense_typo": 8}}, r"layer_wbits glob '\*\.dense_typo' \(--layer-wbits\)"),
    ({"layer_wbits": {"*": 6, "classifier": 8}}, r"layer_wbits glob 'classifier'"),  # shadowed by '*'
    ({"include": ("bert.encoder.*", "pooler")}, r"include glob 'pooler'"),
])
def test_quantization_globs_that_select_nothing_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quantize_(tiny_bert(), UniformConfig(act=None, **kwargs))


def test_cli_quantize_exclude_glob_that_matches_no_layer(tmp_path: Path, data_file: Path) -> None:
    folder = _hf_folder(tmp_path / "dense")
    _clear(run_cli("quantize", folder, "--data", data_file, "--abits", "0", "--exclude", "clasifier", "--out",
                   tmp_path / "q"), "exclude glob 'clasifier' (--exclude) selects no layer", "classifier")
    assert not (tmp_path / "q").exists()


def test_nan_weights_are_refused_at_load(tmp_path: Path) -> None:
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    save(model, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="NaN or infinite values in 1 tensor"):
        load(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "hf")
    make_tokenizer().save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(tmp_path / "hf")


def test_a_diverging_run_is_a_value_error_naming_the_learning_rate() -> None:
    from trimformer.data.text import text_collate
    from trimformer.train.loop import TrainConfig, param_groups, train_steps

    model = tiny_bert()

    def nan_loss(m, batch, step):
        return m(**batch).loss * float("nan"), {}

    with pytest.raises(ValueError, match="lower the learning rate"):
        train_steps(model, nan_loss, param_groups(model, 1e-3, 0.0), synthetic_text_data(16),
                    text_collate(make_tokenizer(), 16), TrainConfig(batch_size=4), 2, "finetune")
