"""Data through the optional ``datasets`` library: Parquet files, save_to_disk folders (text and image columns),
GLUE-style column names; local files only (the hub path is routed, never called)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from trimformer.data.hf import hf_image_data, is_hf_source
from trimformer.data.text import load_text_data
from trimformer.testing import make_tokenizer, tiny_bert, tiny_vision_model

datasets = pytest.importorskip("datasets")

MRPC_FEATURES = {"sentence1": "string", "sentence2": "string"}


def _mrpc(n: int = 6, null_at: int | None = None):
    features = datasets.Features({**{k: datasets.Value(v) for k, v in MRPC_FEATURES.items()},
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"])})
    rows = {"sentence1": [f"good fun {i}" if i != null_at else None for i in range(n)],
            "sentence2": [f"bad plot {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    return datasets.Dataset.from_dict(rows, features=features)


def test_a_parquet_file_with_glue_columns_reads_as_pairs(tmp_path):
    path = tmp_path / "mrpc.parquet"
    _mrpc().to_parquet(str(path))
    data = load_text_data(str(path), "train")
    assert data.texts[1] == "good fun 1" and data.text_pairs[1] == "bad plot 1"
    assert data.label_names == ["not_equivalent", "equivalent"]  # ClassLabel order, not sorted
    assert data.labels == [0, 1, 0, 1, 0, 1]
    only_second = load_text_data(str(path), "train", columns="sentence2,label")
    assert only_second.text_pairs is None and only_second.texts[0] == "bad plot 0"


def test_a_save_to_disk_folder_gives_train_and_validation_splits(tmp_path):
    stsb = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence1": ["a b", "c d", "e f"], "sentence2": ["x", "y", "z"],
                                             "label": [0.5, 3.2, 4.0]}),
        "validation": datasets.Dataset.from_dict({"sentence1": ["g h", "i j"], "sentence2": ["w", "v"],
                                                  "label": [1.5, 2.0]}),
        "test": datasets.Dataset.from_dict({"sentence1": ["k"], "sentence2": ["u"], "label": [-1.0]}),
    })
    stsb.save_to_disk(str(tmp_path / "stsb"))
    train = load_text_data(str(tmp_path / "stsb"), "train")
    test = load_text_data(str(tmp_path / "stsb"), "test")
    assert train.is_regression and train.labels == [0.5, 3.2, 4.0]
    assert test.texts == ["g h", "i j"]  # validation, not the unlabelled test split


def test_bad_rows_of_a_datasets_source_are_named(tmp_path):
    path = tmp_path / "bad.parquet"
    _mrpc(null_at=2).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"bad.parquet:2: null text in 'sentence1'"):
        load_text_data(str(path), "train")
    unlabelled = tmp_path / "test.parquet"
    _mrpc().map(lambda row: {"label": -1}).to_parquet(str(unlabelled))
    with pytest.raises(ValueError, match="no label"):
        load_text_data(str(unlabelled), "train")
    with pytest.raises(ValueError, match=r"column\(s\) \['premise'\] not found"):
        load_text_data(str(tmp_path / "bad.parquet"), "train", columns="premise,label")


def test_sources_are_routed_without_touching_the_network(tmp_path):
    assert is_hf_source("glue/mrpc") and is_hf_source("nyu-mll/glue:mrpc") and is_hf_source("hf:imdb")
    assert not is_hf_source("imdb") and not is_hf_source("data/train.csv") and not is_hf_source("./x/y")
    (tmp_path / "local").mkdir()
    assert not is_hf_source(str(tmp_path / "local" / "missing"))
    with pytest.raises(ValueError, match="unknown dataset 'imdb'.*hf:NAME"):
        load_text_data("imdb", "train")


def _image_folder(tmp_path, classes=("boot", "coat", "shirt")):
    rng = np.random.default_rng(0)
    from PIL import Image

    images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(6)]
    table = datasets.Dataset.from_dict({"image": images, "label": [i % len(classes) for i in range(6)]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.ClassLabel(names=list(classes))}))
    table.save_to_disk(str(tmp_path / "pics"))
    return tmp_path / "pics"


def test_a_datasets_image_column_gives_model_inputs(tmp_path):
    data = hf_image_data(str(_image_folder(tmp_path)), "train", 32)
    pixels, label = data[4]
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32 and int(label) == 1
    assert data.classes == ["boot", "coat", "shirt"] and len(hf_image_data(str(tmp_path / "pics"), "test", 32, 2)) == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_cli_eval_on_datasets_folders(tmp_path):
    vit = tmp_path / "vit"
    tiny_vision_model("vit", num_labels=3).save_pretrained(vit)
    run = _cli("eval", str(vit), "--data", str(_image_folder(tmp_path)), "--json", str(tmp_path / "v.json"))
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "v.json").read_text())["num_examples"] == 6
    text = tmp_path / "text"
    tiny_bert(num_labels=2, vocab_size=32, id2label={0: "not_equivalent", 1: "equivalent"},
              label2id={"not_equivalent": 0, "equivalent": 1}).save_pretrained(text)
    make_tokenizer().save_pretrained(text)
    datasets.DatasetDict({"train": _mrpc(), "validation": _mrpc(4)}).save_to_disk(str(tmp_path / "mrpc"))
    run = _cli("eval", str(text), "--data", str(tmp_path / "mrpc"), "--max-length", "32", "--json",
               str(tmp_path / "t.json"))
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["num_examples"] == 4 and {"accuracy", "macro_f1", "matthews"} <= set(result)
