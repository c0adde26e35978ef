"""The vision command line on a tiny Dinov2 and a tiny ViT classifier and a tiny image folder: prune, eval, bench,
quantize."""

import json

import numpy as np
import pytest

from trimformer.cli import main
from trimformer.testing import tiny_vision_model


@pytest.fixture(params=["dinov2", "vit"])
def vision_setup(tmp_path, request):
    model = tiny_vision_model(request.param, num_labels=2, id2label={0: "dark", 1: "bright"},
                              label2id={"dark": 0, "bright": 1})
    model.save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(0)
    for label, scale in (("bright", 1.0), ("dark", 0.2)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            np.save(tmp_path / "images" / label / f"{i}.npy", (rng.random((32, 32)) * scale).astype(np.float32))
    return tmp_path


def _args(root) -> list[str]:
    return ["--task", "vision", "--data", str(root / "images"), "--eval-data", str(root / "images")]


def _train_args(root, method: str) -> list[str]:
    """prune's data options: training data for the trained methods, none for the training-free ones."""
    return ["--task", "vision", *(["--data", str(root / "images")] if method in ("sait", "asvit") else [])]


@pytest.mark.parametrize("method,extra", [("tome", ["--r", "2"]), ("evit", ["--keep-rate", "0.5"]),
                                          ("sait", ["--steps", "2", "--batch-size", "4", "--default-level", "0.5"]),
                                          ("asvit", ["--steps", "2", "--batch-size", "4", "--target-flops", "0.7"])])
def test_prune_eval_bench(vision_setup, method, extra):
    root = vision_setup
    ckpt = root / method
    assert main(["prune", "--model", str(root / "base"), "--method", method, *_train_args(root, method), *extra,
                 "--out", str(ckpt)]) == 0
    assert main(["eval", str(ckpt), *_args(root), "--json", str(root / "e.json")]) == 0
    evaluated = json.loads((root / "e.json").read_text())
    assert evaluated["method"] == method and evaluated["num_examples"] == 12
    assert evaluated["flops_ratio"] < 1.0  # the method really reduces tokens
    assert main(["bench", str(ckpt), *_args(root), "--batch-size", "4", "--num-samples", "8", "--repeats", "1",
                 "--json", str(root / "b.json")]) == 0
    bench = json.loads((root / "b.json").read_text())
    for key in ("method", "data", "batch_size", "dense_samples_per_s", "pruned_samples_per_s", "speedup",
                "flops_ratio", "accuracy_dense", "accuracy_pruned"):
        assert key in bench, key
    assert ("level" in bench) == (method == "sait")


def test_sait_level_is_a_runtime_dial(vision_setup):
    root = vision_setup
    assert main(["prune", "--model", str(root / "base"), "--method", "sait", *_train_args(root, "sait"), "--steps",
                 "1", "--batch-size", "4", "--out", str(root / "s")]) == 0
    ratios = []
    for level in ("1.0", "0.5", "0.25"):
        assert main(["eval", str(root / "s"), *_args(root), "--level", level, "--json", str(root / "e.json")]) == 0
        ratios.append(json.loads((root / "e.json").read_text())["flops_ratio"])
    assert ratios[0] == pytest.approx(1.0) and ratios[0] > ratios[1] > ratios[2]


def test_vision_errors_are_clear(vision_setup, capsys):
    root = vision_setup
    assert main(["prune", "--model", str(root / "base"), "--method", "ltp", *_train_args(root, "ltp"), "--out",
                 str(root / "x")]) == 2
    assert "--task vision takes" in capsys.readouterr().err
    # the task comes from the model folder's config: no --task needed
    assert main(["prune", "--model", str(root / "base"), "--method", "tome", "--out", str(root / "t")]) == 0
    assert main(["prune", "--model", str(root / "base"), "--method", "tome", "--task", "text",
                 "--out", str(root / "x")]) == 2
    assert "holds a vision model" in capsys.readouterr().err
    assert main(["prune", "--model", str(root / "base"), "--method", "tome", "--task", "vision", "--data",
                 "cifar", "--out", str(root / "x")]) == 2  # ToMe is training free: --data would be ignored
    assert "--data does not apply to --method tome, which is training free" in capsys.readouterr().err
    assert main(["prune", "--model", str(root / "base"), "--method", "tome", "--out", str(root / "x")]) == 0
    assert main(["eval", str(root / "x"), "--task", "vision", "--data", "cifar"]) == 2
    assert "unknown image data" in capsys.readouterr().err
    assert main(["eval", str(root / "x"), "--task", "vision", *_args(root)[2:], "--level", "0.5"]) == 2
    assert "SaiT checkpoints only" in capsys.readouterr().err


def test_prune_then_quantize_one_vision_model(vision_setup):
    root = vision_setup
    assert main(["prune", "--model", str(root / "base"), "--method", "sait", *_train_args(root, "sait"), "--steps",
                 "1", "--batch-size", "4", "--default-level", "0.5", "--out", str(root / "s")]) == 0
    assert main(["quantize", str(root / "s"), *_args(root), "--wbits", "4", "--abits", "8", "--calib-batches", "1",
                 "--out", str(root / "sq"), "--json", str(root / "q.json")]) == 0
    report = json.loads((root / "q.json").read_text())
    assert report["method"] == "sait" and report["flops_ratio"] < 1.0 and report["scheme"] == "pwlq"
    assert main(["eval", str(root / "sq"), *_args(root), "--json", str(root / "e.json")]) == 0
    evaluated = json.loads((root / "e.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(report["accuracy_quant"])
    assert evaluated["flops_ratio"] == pytest.approx(report["flops_ratio"])
