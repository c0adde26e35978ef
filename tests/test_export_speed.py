"""benchmarks/export_speed.py's pieces that shape its numbers: the oracle's inputs and the accuracy bands."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def export_speed(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the module sets it only where unset: leave the test's alone
    spec = importlib.util.spec_from_file_location("export_speed", ROOT / "benchmarks" / "export_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_cuts_text_to_the_flops_share_and_keeps_rows(export_speed):
    batch = {"input_ids": torch.arange(40).view(2, 20), "attention_mask": torch.ones(2, 20, dtype=torch.long),
             "token_type_ids": torch.zeros(2, 20, dtype=torch.long)}
    cut = export_speed.cut_to_flops(batch, 0.42, None)
    assert sorted(cut) == ["attention_mask", "input_ids"]
    assert cut["input_ids"].shape == (2, math.ceil(0.42 * 20))
    assert torch.equal(cut["input_ids"], batch["input_ids"][:, :9])


def test_oracle_resolution_matches_the_patch_share(export_speed):
    assert export_speed.oracle_resolution(168, 14, 1.0) == 168
    res = export_speed.oracle_resolution(168, 14, 0.45)  # 144 patches x 0.45 = 65 -> 8 x 8
    assert res == 112 and res % 14 == 0
    pixels = export_speed.cut_to_flops({"pixel_values": torch.rand(3, 3, 168, 168)}, 0.45, res)["pixel_values"]
    assert pixels.shape == (3, 3, 112, 112)


def test_accuracies_report_bands_and_paired_differences(export_speed):
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    scored = [{"labels": labels[:4]}, {"labels": labels[4:]}]

    def predicting(preds):
        it = iter(np.split(np.eye(2)[preds], 2))
        return lambda b: next(it)

    right = labels.numpy()
    wrong_two = right.copy()
    wrong_two[:2] = 1 - wrong_two[:2]
    out = export_speed.accuracies({"eager_fp32": predicting(right), "other": predicting(wrong_two)}, scored)
    assert out["examples"] == 8
    base, other = out["variants"]["eager_fp32"], out["variants"]["other"]
    assert base["accuracy"] == 100 and base["band95"] == 0 and base["delta_vs_eager_fp32"] == 0
    assert other["accuracy"] == 75 and other["delta_vs_eager_fp32"] == -25
    assert other["band95"] == pytest.approx(100 * 1.96 * math.sqrt(0.75 * 0.25 / 8))
    assert other["agreement_with_eager_fp32"] == 0.75 and other["delta_band95"] > 0
