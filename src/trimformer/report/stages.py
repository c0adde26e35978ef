"""Per-stage wall and CPU time of a demo run (recorded in its JSON and report), and the verdicts the reports print:
words computed from the numbers, never typed."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from trimformer.bench import QUIET_SPREAD


class StageTimer:
    """Records, per named stage, the wall seconds and the CPU seconds (user + system, this process and its finished
    children) it took; ``cpu / wall`` near the thread count means the machine gave the run its cores."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}
        self._start = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        t = os.times()
        return time.perf_counter(), t.user + t.system + t.children_user + t.children_system

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = self._now()
        try:
            yield
        finally:
            end_wall, end_cpu = self._now()
            self.stages[name] = {"wall_s": round(end_wall - wall, 1), "cpu_s": round(end_cpu - cpu, 1)}

    def total(self) -> dict[str, float]:
        wall, cpu = self._now()
        return {"wall_s": round(wall - self._start[0], 1), "cpu_s": round(cpu - self._start[1], 1)}


def stage_table(stages: dict[str, dict[str, float]], total: dict[str, float]) -> str:
    """The markdown table of per-stage wall and CPU seconds."""
    rows = [f"| {name} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} |" for name, s in {**stages, "total": total}.items()]
    return "| stage | wall (s) | CPU, user + system (s) |\n|---|---|---|\n" + "\n".join(rows)


CPU_SHARE_QUIET = 0.7  # below this share of its threads' CPU time, the run was starved by other processes


def cpu_share(stage: dict[str, float], threads: int) -> float | None:
    """The share of ``threads`` cores a stage's process got: CPU seconds / (wall seconds x threads); about 1 on a
    quiet machine (torch's threads spin while they wait), well below 1 when other processes take the cores."""
    if stage["wall_s"] <= 0 or threads < 1:
        return None
    return stage["cpu_s"] / (stage["wall_s"] * threads)


def machine_busy(spread: float | None, share: float | None) -> bool:
    """Whether the timing ran on a busy machine: unsteady timings, or cores taken by other processes."""
    return (spread is not None and spread > QUIET_SPREAD) or (share is not None and share < CPU_SHARE_QUIET)


def quietness(spread: float | None, share: float | None = None) -> str:
    """One sentence on how quiet the machine was while timing: the spread of the dense timings of the same batch
    (:func:`trimformer.bench.timing_spread`) and the share of its cores the process got (:func:`cpu_share`)."""
    parts = []
    if spread is not None:
        parts.append(f"the dense timings of the same batch spread by {100 * spread:.1f}% across repeats (quiet: "
                     f"under {100 * QUIET_SPREAD:.0f}%)")
    if share is not None:
        parts.append(f"the process got {100 * share:.0f}% of its threads' CPU time (quiet: over "
                     f"{100 * CPU_SHARE_QUIET:.0f}%)")
    if not parts:
        return "The machine's quietness was not measured (one repeat); treat the speed as rough."
    measured = "; ".join(parts)
    if machine_busy(spread, share):
        return (f"**The machine was busy during the timing: {measured}.** The speed-ups are medians of "
                "back-to-back pairs, which load moves less than the throughputs, but rerun on a quiet machine "
                "before quoting them.")
    return f"The machine was quiet during the timing: {measured}."


def accuracy_gap(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[float, float]:
    """(accuracy of a minus accuracy of b, in points; the 95% noise band of that difference, in points), from the
    per-example correctness of two models on the same examples (the paired standard error, times 1.96)."""
    n = len(correct_a)
    if n == 0 or n != len(correct_b):
        raise ValueError(f"need the same non-empty examples for both models, got {n} and {len(correct_b)}")
    diffs = [int(a) - int(b) for a, b in zip(correct_a, correct_b, strict=True)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    return 100 * mean, 100 * 1.96 * math.sqrt(var / n)


def versus(name_a: str, name_b: str, gap: float, band: float) -> str:
    """Plain words for an accuracy gap (points, a minus b) and its noise band."""
    if abs(gap) <= band:
        return (f"{name_a} and {name_b} tie on accuracy: they differ by {abs(gap):.2f} points, within the "
                f"±{band:.2f}-point noise band of this test set")
    winner, loser = (name_a, name_b) if gap > 0 else (name_b, name_a)
    return (f"{winner} is more accurate than {loser} by {abs(gap):.2f} points, beyond the ±{band:.2f}-point noise "
            "band of this test set")
