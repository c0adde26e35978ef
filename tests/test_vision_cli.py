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


def test_finetune_a_vision_classifier_through_the_cli(tmp_path):
    """`trimformer finetune` on a vision model folder (the task read from its config): the DINOv2 recipe at a
    reduced resolution, a new head for the folder's classes, a checkpoint that eval runs at that resolution."""
    import os
    import subprocess
    import sys

    from trimformer.checkpoint import read_meta

    tiny_vision_model("dinov2", num_labels=3).save_pretrained(tmp_path / "base")  # 3 labels: the head is replaced
    rng = np.random.default_rng(0)
    for label, scale in (("bright", 1.0), ("dark", 0.2)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            np.save(tmp_path / "images" / label / f"{i}.npy", (rng.random((32, 32)) * scale).astype(np.float32))
    out = tmp_path / "ft"
    result = subprocess.run([sys.executable, "-m", "trimformer.cli", "finetune", "--model", str(tmp_path / "base"),
                             "--data", str(tmp_path / "images"), "--resolution", "16", "--batch-size", "4",
                             "--epochs", "2", "--out", str(out)], capture_output=True, text=True, env=dict(os.environ),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "== finetune" in result.stderr and "vision" in result.stderr  # the summary table
    meta = read_meta(out)
    assert meta["resolution"] == 16 and meta["label_names"] == ["bright", "dark"]
    train = meta["recipe"]["train"]
    assert (train["schedule"], train["head_lr"], train["max_grad_norm"], train["lr"]) == ("cosine", 1e-3, 1.0, 5e-5)
    assert meta["recipe"]["steps"] == 4 and meta["recipe"]["task"] == "vision"
    assert main(["eval", str(out), "--data", str(tmp_path / "images"), "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["num_examples"] == 8 and evaluated["mean_length"] == 5  # (16 / 8)^2 patches + CLS
