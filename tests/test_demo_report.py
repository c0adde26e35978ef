"""The demo reports' words are computed from the numbers: who wins on accuracy (with the noise band), whether the
machine was quiet while timing, and the per-stage wall and CPU time."""

import pytest

from trimformer.bench import QUIET_SPREAD
from trimformer.report.stages import StageTimer, accuracy_gap, cpu_share, machine_busy, quietness, stage_table, versus


def test_accuracy_gap_is_paired_and_names_the_winner():
    a = [True] * 90 + [False] * 10
    b = [True] * 80 + [False] * 20  # a is right on 10 more examples, never wrong where b is right
    gap, band = accuracy_gap(a, b)
    assert gap == pytest.approx(10.0) and 0 < band < gap
    assert versus("LTP", "top-k", gap, band).startswith("LTP is more accurate than top-k by 10.00 points")
    assert versus("LTP", "top-k", -gap, band).startswith("top-k is more accurate than LTP")
    same, band_same = accuracy_gap(a, list(reversed(a)))  # same accuracy, different examples
    assert same == 0.0 and band_same > 0
    assert versus("LTP", "top-k", 0.5, band_same).startswith("LTP and top-k tie")
    with pytest.raises(ValueError, match="same non-empty examples"):
        accuracy_gap(a, b[:5])


def test_quietness_reports_a_busy_machine():
    assert "busy" in quietness(QUIET_SPREAD * 2) and "30.0%" in quietness(0.3)
    assert "quiet" in quietness(QUIET_SPREAD / 2) and "busy" not in quietness(QUIET_SPREAD / 2)
    assert "not measured" in quietness(None)
    # steady timings, but other processes took the cores: 80 CPU s in 100 s wall on 2 threads = 40%
    starved = cpu_share({"wall_s": 100.0, "cpu_s": 80.0}, threads=2)
    assert starved == 0.4 and machine_busy(QUIET_SPREAD / 2, starved)
    assert "busy" in quietness(QUIET_SPREAD / 2, starved) and "40%" in quietness(QUIET_SPREAD / 2, starved)
    full = cpu_share({"wall_s": 100.0, "cpu_s": 190.0}, threads=2)
    assert not machine_busy(QUIET_SPREAD / 2, full) and not machine_busy(None, full)
    assert cpu_share({"wall_s": 0.0, "cpu_s": 0.0}, threads=2) is None


def test_stage_timer_records_wall_and_cpu_per_stage():
    timer = StageTimer()
    with timer.stage("spin"):
        sum(i * i for i in range(200_000))
    spin = timer.stages["spin"]
    assert spin["wall_s"] >= 0 and spin["cpu_s"] >= 0 and set(timer.total()) == {"wall_s", "cpu_s"}
    table = stage_table(timer.stages, timer.total())
    assert "| spin |" in table and "| total |" in table


def test_object_patches_and_keep_rates_tell_garment_from_background():
    import torch

    from trimformer import SaiTConfig, prune
    from trimformer.report.plots import kept_patch_masks
    from trimformer.report.vision_demo import keep_rates, object_patches, tiny_vit

    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[0, 4:8, 4:8] = 200  # one garment patch in the first image (4 px patches: 7 x 7 grid)
    images[1, :, 14:] = 30  # the right half of the second, faint but above 10% of white
    on_object = object_patches(images, 4)
    assert on_object.shape == (2, 49)
    assert on_object[0].nonzero().flatten().tolist() == [8] and int(on_object[1].sum()) == 4 * 7  # columns 3-6
    torch.manual_seed(0)
    model = prune(tiny_vit(16, 3, 2), SaiTConfig(policy="topk", stages=(1,)))
    pixels = torch.randn(2, 3, 28, 28)
    half = keep_rates(model, [(pixels, torch.zeros(2))], on_object, 0.5)
    kept = int(kept_patch_masks(model, pixels, 0.5).sum())
    assert 0 < kept < 2 * 49 and 0 <= half["object"] <= 1 and 0 < half["background"] < 1
    n_object = int(on_object.sum())
    assert abs(half["object"] * n_object + half["background"] * (2 * 49 - n_object) - kept) < 1e-3
