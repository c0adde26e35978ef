"""The timing harness: every variant sees every batch, interleaved, and the slower variant reads slower."""

import time

import torch

from trimformer.bench import time_variants


def test_time_variants_interleaves_batches_and_ranks_speed():
    calls: list[tuple[str, int]] = []

    def variant(name: str, seconds: float):
        def run(batch: dict) -> None:
            calls.append((name, int(batch["input_ids"][0, 0])))
            time.sleep(seconds)
        return run

    batches = [{"input_ids": torch.full((2, 3), i)} for i in range(4)]
    speed = time_variants({"slow": variant("slow", 0.004), "fast": variant("fast", 0.001)}, batches,
                          repeats=2, warmup=1)
    timed = calls[2:]  # after one warm-up batch per variant
    assert len(timed) == 2 * 4 * 2
    assert [b for _, b in timed[:8]] == [0, 0, 1, 1, 2, 2, 3, 3]  # batch by batch, both variants each time
    assert [n for n, _ in timed[:4]] == ["slow", "fast", "fast", "slow"]  # the order rotates
    assert speed["fast"]["samples_per_s"] > speed["slow"]["samples_per_s"]
    assert speed["slow"]["latency_ms_median"] >= 4.0
