"""The demo reports' words are computed from the numbers: who wins on accuracy (with the noise band), whether the
machine was quiet while timing, and the per-stage wall and CPU time."""

import pytest

from trimformer.bench import QUIET_SPREAD
from trimformer.report.stages import StageTimer, accuracy_gap, quietness, stage_table, versus


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
    assert "busy" in quietness(QUIET_SPREAD * 2) and "30%" in quietness(0.3)
    assert "quiet" in quietness(QUIET_SPREAD / 2) and "busy" not in quietness(QUIET_SPREAD / 2)
    assert "unknown" in quietness(None)


def test_stage_timer_records_wall_and_cpu_per_stage():
    timer = StageTimer()
    with timer.stage("spin"):
        sum(i * i for i in range(200_000))
    spin = timer.stages["spin"]
    assert spin["wall_s"] >= 0 and spin["cpu_s"] >= 0 and set(timer.total()) == {"wall_s", "cpu_s"}
    table = stage_table(timer.stages, timer.total())
    assert "| spin |" in table and "| total |" in table
