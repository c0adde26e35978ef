"""A model's labels meet the data's in one place: mapped by name when both sides have names, by index (same
count) when the model has transformers' default names, refused otherwise with both sets listed; one-class
training data is refused."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import trimformer
from trimformer.data.labels import has_names, match_labels
from trimformer.data.text import TextDataset
from trimformer.testing import make_tokenizer, tiny_bert, tiny_vision_model


def test_names_are_mapped_by_name():
    assert match_labels(["neg", "pos"], ["pos", "neg"], "d.csv") == [1, 0]
    assert match_labels(["pos"], ["neg", "neutral", "pos"], "d.csv") == [2]  # an evaluation file may lack a class
    data = TextDataset(["a", "b", "c"], [0, 1, 1], ["neg", "pos"], "d")
    assert data.relabel(["pos", "neg"]).labels == [1, 0, 0]


def test_an_unknown_label_lists_both_sets():
    with pytest.raises(ValueError, match=r"\['maybe'\] that .* model's labels are \['neg', 'pos'\]"):
        match_labels(["maybe", "neg"], ["neg", "pos"], "test.csv")


def test_unnamed_model_classes_are_matched_by_index_with_equal_counts():
    assert not has_names(["LABEL_0", "LABEL_1"]) and has_names(["LABEL_1", "LABEL_0"]) and has_names(["a", "b"])
    assert match_labels(["neg", "pos"], ["LABEL_0", "LABEL_1"], "d") == [0, 1]
    with pytest.raises(ValueError, match="20 classes.*2 unnamed classes.*matched by index"):
        match_labels([f"c{i}" for i in range(20)], ["LABEL_0", "LABEL_1"], "d")


def test_targets_and_classes_do_not_mix():
    with pytest.raises(ValueError, match="regression targets but the model has 2 classes"):
        match_labels(None, ["neg", "pos"], "sts.csv")
    with pytest.raises(ValueError, match="2 classes but the model is a regression model"):
        match_labels(["neg", "pos"], None, "d.csv")
    assert match_labels(None, None, "sts.csv") is None


def test_the_api_checks_where_data_meets_a_model():
    tokenizer = make_tokenizer()
    model = trimformer.prune(tiny_bert(num_labels=2, vocab_size=32, id2label={0: "neg", 1: "pos"},
                                       label2id={"neg": 0, "pos": 1}), trimformer.TopKConfig(target_flops=None))
    swapped = TextDataset(["good fun", "bad plot", "great"], [0, 1, 0], ["pos", "neg"], "swapped")
    reference = TextDataset(["good fun", "bad plot", "great"], [1, 0, 1], ["neg", "pos"], "reference")
    result = trimformer.evaluate(model, swapped, tokenizer, progress=False)
    assert result.accuracy == trimformer.evaluate(model, reference, tokenizer, progress=False).accuracy
    three = TextDataset(["a", "b", "c"], [0, 1, 2], ["neg", "neutral", "pos"], "three")
    with pytest.raises(ValueError, match="neutral"):
        trimformer.evaluate(model, three, tokenizer)
    with pytest.raises(ValueError, match="one class only"):
        trimformer.fit(model, TextDataset(["a", "b"], [1, 1], ["neg", "pos"], "one"), tokenizer=tokenizer)


def test_the_api_takes_a_datasets_ids_for_an_unnamed_model_up_to_its_outputs():
    tokenizer = make_tokenizer()
    model = trimformer.prune(tiny_bert(num_labels=3, vocab_size=32), trimformer.TopKConfig(target_flops=None))
    two = TextDataset(["good fun", "bad plot"], [0, 1], ["neg", "pos"], "two")
    assert trimformer.evaluate(model, two, tokenizer, progress=False).num_examples == 2  # ids 0, 1 of 3 outputs
    four = TextDataset(["a", "b", "c", "d"], [0, 1, 2, 3], ["w", "x", "y", "z"], "four")
    with pytest.raises(ValueError, match="4 classes .* 3 unnamed classes"):
        trimformer.evaluate(model, four, tokenizer)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


@pytest.fixture
def text_model(tmp_path):
    path = tmp_path / "text_model"
    tiny_bert(num_labels=2, vocab_size=32, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}
              ).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.mark.skipif(importlib.util.find_spec("orangecontrib") is None, reason="20 Newsgroups asset not installed")
def test_a_two_class_model_on_twenty_class_data_is_refused(text_model):
    run = _cli("eval", str(text_model), "--data", "20newsgroups", "--limit", "8")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "['neg', 'pos']" in run.stderr and "comp.graphics" in run.stderr


def test_an_unseen_label_in_the_evaluation_file_is_refused(text_model, tmp_path):
    data = tmp_path / "test.csv"
    data.write_text("text,label\ngood fun,pos\nbad plot,neutral\n")
    run = _cli("eval", str(text_model), "--data", str(data))
    assert run.returncode == 2 and "['neutral']" in run.stderr and "['neg', 'pos']" in run.stderr


def test_one_class_training_data_is_refused(text_model, tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("text,label\ngood fun,pos\ngreat plot,pos\n")
    run = _cli("finetune", "--model", str(text_model), "--data", str(data), "--out", str(tmp_path / "ft"))
    assert run.returncode == 2 and "one class only" in run.stderr
    assert not (tmp_path / "ft").exists()
    run = _cli("prune", "--model", str(text_model), "--data", str(data), "--out", str(tmp_path / "pr"))
    assert run.returncode == 2 and "one class only" in run.stderr


def test_a_three_class_model_on_a_twelve_class_image_folder_is_refused(tmp_path):
    model = tmp_path / "vit"
    tiny_vision_model("vit", num_labels=3).save_pretrained(model)
    root = tmp_path / "images"
    for i in range(12):
        (root / f"class{i:02d}").mkdir(parents=True)
        np.save(root / f"class{i:02d}" / "a.npy", np.full((32, 32), i / 12, dtype=np.float32))
    run = _cli("eval", str(model), "--data", str(root))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "12 classes" in run.stderr and "3 unnamed classes" in run.stderr and "class11" in run.stderr
