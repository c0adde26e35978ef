"""``trimformer structured`` (CNN channels) and ``trimformer heads`` (transformer heads / MLP channels) end to end
on tiny models and a tiny seeded image folder, in-process: each writes a smaller checkpoint that reloads and meets
the budget; bad inputs give clear errors."""

import json

import numpy as np
import pytest
import torch

import trimformer
from trimformer.cli import main
from trimformer.structured import count_macs
from trimformer.testing import tiny_mobilenet_cnn, tiny_vision_model

FAST = ["--batch-size", "4", "--calibration-batches", "1"]


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    trimformer.save(tiny_mobilenet_cnn(num_classes=2), root / "cnn", label_names=["bright", "dark"])
    rng = np.random.default_rng(0)
    for label, scale in (("bright", 1.0), ("dark", 0.2)):
        (root / "images" / label).mkdir(parents=True)
        for i in range(8):
            np.save(root / "images" / label / f"{i}.npy", (rng.random((16, 16)) * scale).astype(np.float32))
    vit = tiny_vision_model("vit", num_labels=2, id2label={0: "bright", 1: "dark"}, label2id={"bright": 0, "dark": 1})
    vit.save_pretrained(root / "vit")
    trimformer.save(vit, root / "vit_ckpt", resolution=32)
    return root


@pytest.mark.parametrize("method,extra", [
    ("adapruner", ["--sparse-steps", "1", "--finetune-steps", "1", "--selection-images", "8", "--criteria", "l1"]),
    ("magnitude", ["--finetune-steps", "1"]),
    ("slimming", ["--sparse-steps", "1", "--finetune-steps", "1"]),
])
def test_structured_writes_a_smaller_cnn_at_the_budget(setup, method, extra, capsys):
    out = setup / method
    assert main(["structured", str(setup / "cnn"), "--method", method, "--target-flops", "0.6", "--out", str(out),
                 "--data", str(setup / "images"), *FAST, *extra, "--json", str(setup / f"{method}.json")]) == 0
    summary = json.loads((setup / f"{method}.json").read_text())
    assert summary == json.loads(capsys.readouterr().out)
    dense, _ = trimformer.load(setup / "cnn")
    small, meta = trimformer.load(out)
    example = torch.zeros(1, 1, 16, 16)
    assert _params(small) < _params(dense) and summary["params"] == _params(small)
    fraction = count_macs(small, example)[0] / count_macs(dense, example)[0]
    assert fraction == pytest.approx(summary["flops_fraction"]) and abs(fraction - 0.6) <= 0.6 * 0.011
    assert meta["extra"]["recipe"]["method"] == method and 0 <= summary["accuracy"] <= 100


def test_ofar_family_then_extraction(setup):
    family = setup / "family"
    assert main(["structured", str(setup / "cnn"), "--method", "ofar", "--rates", "0.7", "0.5", "--resolutions",
                 "16", "12", "--steps", "2", "--max-search-steps", "1", "--search-interval", "1", "--out",
                 str(family), "--data", str(setup / "images"), "--accuracy-limit", "0", *FAST]) == 0
    assert (family / "ofar.json").is_file()
    out = setup / "sub"
    assert main(["structured", str(family), "--rate", "0.5", "--resolution", "12", "--out", str(out), "--data",
                 str(setup / "images"), "--json", str(setup / "sub.json")]) == 0
    small, meta = trimformer.load(out)
    summary = json.loads((setup / "sub.json").read_text())
    assert meta["input_shape"] == [1, 1, 12, 12] and meta["extra"]["resolution"] == 12
    assert _params(small) < _params(trimformer.load_ofar(family).model) and summary["flops_fraction"] <= 0.5 * 1.011
    with pytest.raises(SystemExit):  # --rate outside (0, 1] is refused by argparse
        main(["structured", str(family), "--rate", "1.5", "--resolution", "12", "--out", str(setup / "x")])


def test_heads_writes_a_smaller_transformer(setup):
    out = setup / "heads"
    assert main(["heads", str(setup / "vit"), "--task", "vision", "--target-flops", "0.7", "--out", str(out),
                 "--data", str(setup / "images"), "--batch-size", "4", "--calibration-batches", "2",
                 "--json", str(setup / "heads.json")]) == 0
    summary = json.loads((setup / "heads.json").read_text())
    model, _ = trimformer.load(out)
    assert summary["params"] == _params(model) < summary["params_dense"] and summary["flops_fraction"] <= 0.7
    assert main(["eval", str(out), "--data", str(setup / "images")]) == 0  # eval reads the smaller checkpoint


@pytest.mark.parametrize("argv,message", [
    (["structured", "{root}/vit_ckpt", "--out", "{root}/o"], "trimformer heads"),
    (["heads", "{root}/cnn", "--target-flops", "0.5", "--out", "{root}/o"], "trimformer structured"),
    (["structured", "{root}/missing", "--out", "{root}/o"], "checkpoint not found"),
    (["structured", "{root}/cnn", "--method", "magnitude", "--sparse-steps", "3", "--out", "{root}/o"],
     "--sparse-steps does not apply to --method magnitude"),
    (["structured", "{root}/cnn", "--method", "ofar", "--target-flops", "0.5", "--out", "{root}/o"],
     "--target-flops is for --method adapruner | magnitude | slimming"),
    (["structured", "{root}/cnn", "--rate", "0.5", "--out", "{root}/o"], "extract a sub-network from an OFAR"),
    (["structured", "{root}/cnn", "--out", "{root}/cnn"], "is not a checkpoint of this command (no structured.json)"),
])
def test_structured_errors_are_clear(setup, argv, message, capsys):
    assert main([a.format(root=setup) for a in argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command,target", [("structured", "0"), ("structured", "1.2"), ("heads", "1.0")])
def test_targets_outside_the_range_are_refused(setup, command, target, capsys):
    with pytest.raises(SystemExit):
        main([command, str(setup / "cnn"), "--target-flops", target, "--out", str(setup / "o")])
    assert "expected a fraction in (0, 1" in capsys.readouterr().err
