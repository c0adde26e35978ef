"""The timing harness: every variant sees every batch, interleaved, and the slower variant reads slower."""

import time

import pytest
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


def _speed(**samples_per_s: float) -> dict[str, dict[str, float]]:
    return {name: {"samples_per_s": s, "latency_ms_median": 1000.0 / s} for name, s in samples_per_s.items()}


def test_speedups_count_against_the_faster_dense_run():
    from trimformer.bench import fastest_dense, speedups

    engine_faster = _speed(dense=10.0, engine_dense=12.5, packed=25.0)
    assert fastest_dense(engine_faster) == "engine_dense"
    ratios = speedups(engine_faster)
    assert ratios["dense_baseline"] == "engine_dense"
    assert ratios["speedup"] == 2.0 and ratios["latency_speedup"] == 2.0
    assert ratios["speedup_vs_transformers"] == 2.5
    transformers_faster = _speed(dense=20.0, engine_dense=12.5, packed=25.0)
    assert speedups(transformers_faster)["speedup"] == 1.25
    assert speedups(_speed(dense=20.0, packed=25.0))["dense_baseline"] == "dense"  # one dense run only


def _timed(**seconds: list[float]) -> dict[str, dict]:
    return {name: {"seconds": tuple(s)} for name, s in seconds.items()}


def test_paired_speedup_is_the_median_of_back_to_back_ratios():
    from trimformer.bench import paired_speedup

    # 2 repeats x 3 batches; one pair hit by a load burst (dense 10x slower once) moves one ratio, not the median
    speed = _timed(dense=[1.0, 2.0, 3.0, 10.0, 2.0, 3.0], packed=[0.5, 1.0, 1.5, 0.5, 1.0, 1.5])
    assert paired_speedup(speed, "packed", "dense") == 2.0
    assert paired_speedup(speed, "dense", "packed") == 0.5


def test_timing_spread_flags_a_busy_machine():
    from trimformer.bench import QUIET_SPREAD, timing_spread

    quiet = _timed(dense=[1.00, 2.00, 1.01, 2.02, 0.99, 2.00])  # 2 batches x 3 repeats, 2% apart at most
    busy = _timed(dense=[1.0, 2.0, 1.5, 3.0, 1.0, 2.0])
    assert timing_spread(quiet, "dense", 2) < QUIET_SPREAD < timing_spread(busy, "dense", 2)
    assert abs(timing_spread(busy, "dense", 2) - 0.5) < 1e-9
    assert timing_spread(_timed(dense=[1.0, 2.0]), "dense", 2) is None  # one repeat: nothing to compare
    with pytest.raises(ValueError, match="repeats of 4 batches"):
        timing_spread(quiet, "dense", 4)


def test_time_variants_keeps_every_call_in_pair_order():
    batches = [{"input_ids": torch.zeros(1, 2)} for _ in range(3)]
    speed = time_variants({"a": lambda b: None, "b": lambda b: None}, batches, repeats=2, warmup=0)
    assert len(speed["a"]["seconds"]) == len(speed["b"]["seconds"]) == 6


def test_benchmark_records_the_paired_speedup_and_the_quietness():
    import trimformer
    from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert

    config = trimformer.TopKConfig(final_keep_rate=0.5, target_flops=None)
    pruned = trimformer.prune(tiny_bert(num_labels=2, vocab_size=32), config)
    record = trimformer.benchmark(pruned, synthetic_text_data(16), batch_size=4, tokenizer=make_tokenizer(),
                                  max_length=32, num_samples=8, repeats=3, accuracy=False)
    assert record["speedup_paired"] > 0 and record["dense_spread"] >= 0
    once = trimformer.benchmark(pruned, synthetic_text_data(16), batch_size=4, tokenizer=make_tokenizer(),
                                max_length=32, num_samples=8, repeats=1, accuracy=False)
    assert once["dense_spread"] is None  # one repeat: nothing to compare
