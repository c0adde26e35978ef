"""OFARPruning (trimformer.structured.ofar): masks agree with physical removal, the early-search stopping rule,
budgets, the family checkpoint, refusals, and one test per OFARConfig field that it changes behaviour (registered
as in tests/test_method_knobs.py and checked complete here). Tiny zoo CNNs from trimformer.testing."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch

import trimformer
from trimformer.checkpoint.meta import CheckpointError
from trimformer.structured import (
    BudgetError,
    OFARConfig,
    OFARResult,
    WidthCost,
    channel_groups,
    channel_scores,
    count_macs,
    load_ofar,
    load_structured,
    ofar_prune,
    pruned_copy,
    recalibrate_batchnorm_,
    save_ofar,
    save_structured,
)
from trimformer.structured import ofar as ofar_module
from trimformer.structured.ofar_masks import global_widths, mask_similarity, masked, resize
from trimformer.structured.train import calibration_inputs
from trimformer.testing import tiny_cnn, tiny_image_data

# the tiny resnet's four groups of 8-16 channels cannot meet every budget to 1% at every step: 3% here, 1% in the
# budget test
QUICK = dict(rates=(0.7, 0.5), resolutions=(16, 12), steps=4, search_interval=2, max_search_steps=2, batch_size=8,
             calibration_batches=2, tolerance=0.03)
KNOBS: set[str] = set()


def knob(name: str):
    def register(test):
        KNOBS.add(name)
        return test

    return register


def test_every_field_has_a_knob_test():
    assert KNOBS == {f.name for f in dataclasses.fields(OFARConfig)}


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_image_data(32)


def run(data, kind: str = "resnet", **changes: Any) -> OFARResult:
    return ofar_prune(tiny_cnn(kind), OFARConfig(**{**QUICK, **changes}), data, progress=False)


@pytest.fixture(scope="module")
def base(data) -> OFARResult:
    return run(data)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def widths(result: OFARResult) -> dict[float, dict[str, int]]:
    return {rate: {g: len(k) for g, k in s.items()} for rate, s in result.structures.items()}


# ---------------------------------------------------------------- masks and extraction


@pytest.mark.parametrize("kind", ["resnet", "mobilenetv2"])
def test_masked_shared_network_equals_the_extracted_subnet(kind, data):
    result = run(data, kind)
    x = data[0]
    for rate in result.structures:
        for size in result.config.resolutions:
            with torch.no_grad():
                with result.masked(rate):
                    shared = result.model(resize(x, size))
                small = result.subnet(rate, size, data, recalibrate=False)
                assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in result.model.parameters())
                torch.testing.assert_close(small(resize(x, size)), shared, rtol=1e-5, atol=1e-5)
            assert result.model(resize(x, size)).shape == shared.shape  # hooks gone after the context


def test_subnet_recalibrates_its_batchnorms_at_its_resolution(base, data):
    rate, size = 0.5, 12
    small = base.subnet(rate, size, data)
    # the masked shared network, recalibrated on the same batches at the same resolution, computes the same
    twin = OFARResult(copy.deepcopy(base.model), base.report, base.structures, base.config)
    batches = calibration_inputs(data, base.config.calibration_batches, base.config.batch_size, base.config.seed)
    with twin.masked(rate):
        recalibrate_batchnorm_(twin.model, [resize(b, size) for b in batches])
        with torch.no_grad():
            expected = twin.model(resize(data[0], size))
    with torch.no_grad():
        torch.testing.assert_close(small(resize(data[0], size)), expected, rtol=1e-4, atol=1e-4)
        stale = base.subnet(rate, size, data, recalibrate=False)(resize(data[0], size))
    assert not torch.allclose(stale, expected, atol=1e-3)  # the shared statistics are not the sub-network's
    assert small.trimformer_structure["recipe"]["resolution"] == size
    assert small.trimformer_structure["recipe"]["rate"] == rate


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("kind", ["resnet", "mobilenetv2"])
def test_every_subnet_meets_its_flops_budget_within_one_percent(kind, allocation, data):
    result = run(data, kind, rates=(0.8, 0.6, 0.4), allocation=allocation, steps=2, max_search_steps=0, tolerance=0.01)
    largest = result.config.largest
    dense = count_macs(tiny_cnn(kind), resize(data[0][:1], largest))[0]
    for rate in result.structures:
        macs = count_macs(result.subnet(rate, largest, data), resize(data[0][:1], largest))[0]
        assert abs(macs / dense / rate - 1) <= 0.01
        assert result.report["subnets"][f"{rate:g}@{largest}"]["macs"] == macs
        small = result.report["subnets"][f"{rate:g}@12"]
        assert small["macs"] < macs and abs(small["flops_fraction_same_resolution"] / rate - 1) < 0.1


def test_mask_similarity_is_the_cosine_of_the_mask_vectors(data):
    groups = channel_groups(tiny_cnn(), data[0][:1])
    g = next(g for g in groups if g.channels == 8)
    assert mask_similarity(groups, {g.name: [0, 1, 2, 3]}, {g.name: [0, 1, 2, 3]}) == 1.0
    others = sum(h.channels for h in groups if h is not g)
    expected = (2 + others) / (4 + others)  # two of four kept channels shared; the other groups all kept
    assert mask_similarity(groups, {g.name: [0, 1, 2, 3]}, {g.name: [0, 1, 4, 5]}) == pytest.approx(expected)


def test_masking_zeroes_only_the_dropped_channels(data):
    model = tiny_cnn()
    groups = channel_groups(model, data[0][:1])
    seen: list[torch.Tensor] = []

    def forward() -> None:  # the batch norm's output, before the in-place ReLU after it
        handle = model.blocks[0].body[1].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
        with torch.no_grad():
            model(data[0][:2])
        handle.remove()

    forward()
    with masked(model, groups, {"blocks.0.body.0": [1, 4]}):
        forward()  # the masking hooks run first (registered first): conv, then its batch norm
    dense, sub = seen
    assert sub[:, [0, 2, 3, 5, 6, 7]].abs().max() == 0 and dense[:, [0, 2]].abs().max() > 0
    assert torch.equal(sub[:, [1, 4]], dense[:, [1, 4]])


# ---------------------------------------------------------------- the early-search stopping rule


def scripted_search(monkeypatch, sequence: list[dict[float, dict[str, list[int]]]]) -> list[int]:
    """Replace the mask computation by ``sequence`` (one structure set per check); returns the steps checked."""
    steps: list[int] = []

    def fake(model, config, groups, cost, example):
        steps.append(len(steps))
        structures = sequence[min(len(steps) - 1, len(sequence) - 1)]
        return structures, {r: {g: len(k) for g, k in s.items()} for r, s in structures.items()}

    monkeypatch.setattr(ofar_module, "search_masks", fake)
    return steps


@knob("similarity_threshold")
def test_search_stops_when_masks_stop_changing_and_not_before(monkeypatch, data):
    a, b, c = ({"blocks.0.body.0": k} for k in ([0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 5, 6]))
    # checks at steps 0, 2, 4, 6, ...: masks change (0 -> 2), change (2 -> 4), then hold (4 -> 6)
    scripted_search(monkeypatch, [{0.5: a}, {0.5: b}, {0.5: c}, {0.5: c}])
    config = dict(steps=12, search_interval=2, max_search_steps=10, rates=(0.5,))
    result = run(data, **config)
    search = result.report["search"]
    assert [c["step"] for c in search["checks"]] == [0, 2, 4, 6] and search["stopped_at"] == 6
    assert search["converged"] and search["checks"][-1]["similarity"] == {"0.5": 1.0}
    assert result.structures == {0.5: c}
    # a lower threshold accepts the small change at step 2 (3 of the group's 4 kept channels shared: 43/44)
    scripted_search(monkeypatch, [{0.5: a}, {0.5: b}, {0.5: c}, {0.5: c}])
    low = run(data, **config, similarity_threshold=0.9).report["search"]
    assert low["stopped_at"] == 2 and low["converged"]


@knob("max_search_steps")
def test_search_ends_at_max_search_steps_when_masks_keep_changing(monkeypatch, data):
    a, b = ({"blocks.0.body.0": k} for k in ([0, 1, 2, 3], [4, 5, 6, 7]))
    scripted_search(monkeypatch, [{0.5: a}, {0.5: b}, {0.5: a}, {0.5: b}, {0.5: a}, {0.5: b}])
    first = run(data, steps=10, search_interval=2, max_search_steps=5, rates=(0.5,)).report["search"]
    assert [c["step"] for c in first["checks"]] == [0, 2, 4, 5]
    assert first["stopped_at"] == 5 and not first["converged"] and first["checks"][-1]["stopped"] == "max_search_steps"
    scripted_search(monkeypatch, [{0.5: a}, {0.5: b}, {0.5: a}, {0.5: b}, {0.5: a}, {0.5: b}])
    second = run(data, steps=10, search_interval=2, max_search_steps=3, rates=(0.5,)).report["search"]
    assert second["stopped_at"] == 3


@knob("search_interval")
def test_search_interval_sets_the_checks(monkeypatch, data):
    a, b = ({"blocks.0.body.0": k} for k in ([0, 1, 2, 3], [4, 5, 6, 7]))
    changing = [{0.5: a}, {0.5: b}] * 4
    scripted_search(monkeypatch, changing)
    one = run(data, steps=6, max_search_steps=4, search_interval=1, rates=(0.5,))
    assert [c["step"] for c in one.report["search"]["checks"]] == [0, 1, 2, 3, 4]
    scripted_search(monkeypatch, changing)
    three = run(data, steps=6, max_search_steps=4, search_interval=3, rates=(0.5,))
    assert [c["step"] for c in three.report["search"]["checks"]] == [0, 3, 4]


def test_real_masks_stabilise_when_the_weights_do_not_move(data):
    result = run(data, criterion="bn_scale", steps=8, max_search_steps=6, lr=1e-12)
    assert result.report["search"]["stopped_at"] == 2 and result.report["search"]["converged"]


# ---------------------------------------------------------------- the checkpoint


def test_family_checkpoint_reloads_identical_subnets(base, data, tmp_path):
    path = save_ofar(base, tmp_path / "family")
    back = load_ofar(path)
    assert back.structures == base.structures and back.config == base.config
    assert same_weights(back.model, base.model)
    x = data[0]
    for rate in base.structures:
        for size in base.config.resolutions:
            mine, theirs = base.subnet(rate, size, data), back.subnet(rate, size, data)
            with torch.no_grad():
                assert torch.equal(mine(resize(x, size)), theirs(resize(x, size)))
    small = back.subnet(0.5, 12, data)
    trimformer.save(small, tmp_path / "small")  # an extracted sub-network is a structured model
    again, meta = trimformer.load(tmp_path / "small")
    with torch.no_grad():
        assert torch.equal(again(resize(x, 12)), small(resize(x, 12)))
    assert meta["recipe"]["method"] == "ofar" and meta["recipe"]["resolution"] == 12
    save_structured(again, tmp_path / "again")
    assert torch.equal(load_structured(tmp_path / "again")[0](resize(x, 12)), small(resize(x, 12)))


def test_family_checkpoint_refusals(base, tmp_path):
    path = save_ofar(base, tmp_path / "family")
    with pytest.raises(CheckpointError, match="already holds"):
        save_ofar(base, path)
    save_ofar(base, path, overwrite=True)
    (tmp_path / "mine").mkdir()
    with pytest.raises(CheckpointError, match="never replaced"):
        save_ofar(base, tmp_path / "mine", overwrite=True)
    with pytest.raises(CheckpointError, match="not an OFAR checkpoint"):
        load_ofar(tmp_path / "mine")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_ofar(tmp_path / "nowhere")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="sha256"):
        load_ofar(path)
    (path / "ofar.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_ofar(path)


# ---------------------------------------------------------------- the verb and bad input


def test_structured_prune_runs_ofar_and_reports_validation_accuracy(data):
    model = tiny_cnn("mobilenetv2")
    before = copy.deepcopy(model)
    result = trimformer.structured_prune(model, trimformer.OFARConfig(**QUICK), data, val=data, progress=False)
    assert isinstance(result, OFARResult) and same_weights(model, before)
    assert set(result.report["val_accuracy"]) == {"0.7@16", "0.7@12", "0.5@16", "0.5@12"}
    with pytest.raises(TypeError, match="structured_prune"):
        trimformer.prune(model, OFARConfig())


@pytest.mark.parametrize("changes, match", [
    (dict(rates=()), "at least one FLOPs budget"), (dict(rates=(0.5, 1.5)), "rates"),
    (dict(rates=(0.5, 0.5)), "repeats a budget"), (dict(rates=(float("nan"),)), "finite"),
    (dict(resolutions=()), "at least one input size"), (dict(resolutions=(28, 2)), "integers >= 4"),
    (dict(resolutions=(28, 20.5)), "integers >= 4"), (dict(resolutions=(20, 20)), "repeats a size"),
    (dict(criterion="l2"), "unknown importance criterion"), (dict(allocation="local"), "allocation"),
    (dict(steps=10, max_search_steps=20), "cannot exceed steps"), (dict(similarity_threshold=0.0), "cosine"),
    (dict(distill_weight=1.5), "distill_weight"), (dict(subnets_per_step=0), "subnets_per_step"),
    (dict(search_interval=0), "search_interval"), (dict(min_channel_ratio=0.0), "min_channel_ratio"),
    (dict(tolerance=0.7), "tolerance"), (dict(lr=0.0), "lr"), (dict(batch_size=0), "batch_size"),
])
def test_bad_configs_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        OFARConfig(**changes)


def test_config_round_trips_through_json():
    config = OFARConfig(rates=(0.6, 0.3), resolutions=(32, 24, 16), allocation="uniform", steps=50,
                        max_search_steps=20)
    assert OFARConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown option"):
        OFARConfig.from_dict({"rate": 0.5})


def test_bad_input_is_refused(base, data):
    with pytest.raises(ValueError, match="rate 0.3 is not one"):
        base.subnet(0.3, 16, data)
    with pytest.raises(ValueError, match="resolution 20 is not one"):
        base.subnet(0.5, 20, data)
    with pytest.raises(ValueError, match="pair"):
        base.subnet(0.5, 16, data[0])
    with pytest.raises(ValueError, match="pair"):
        ofar_prune(tiny_cnn(), OFARConfig(**QUICK), data[0], progress=False)
    small = pruned_copy(tiny_cnn(), data[0][:1], {"blocks.0.body.0": [0, 1]})
    with pytest.raises(ValueError, match="already structurally pruned"):
        ofar_prune(small, OFARConfig(**QUICK), data, progress=False)
    with pytest.raises(BudgetError, match="unreachable"):
        run(data, rates=(0.02,))
    with pytest.raises(TypeError, match="OFARConfig"):
        ofar_prune(tiny_cnn(), trimformer.AdaPrunerConfig(), data)


def test_ofar_is_deterministic(base, data):
    again = run(data)
    assert again.report["losses"] == base.report["losses"] and again.structures == base.structures
    assert same_weights(again.model, base.model)


# ---------------------------------------------------------------- every field changes behaviour


@knob("rates")
def test_rates_set_the_budgets(base, data):
    other = run(data, rates=(0.8, 0.4))
    assert set(other.structures) == {0.8, 0.4}
    assert other.report["subnets"]["0.4@16"]["macs"] < base.report["subnets"]["0.5@16"]["macs"]


@knob("resolutions")
def test_resolutions_set_the_subnets_inputs(base, data):
    other = run(data, resolutions=(16, 8))
    assert other.report["losses"][:2] == base.report["losses"][:2]  # the search phase trains the dense net alike
    assert other.report["losses"][2:] != base.report["losses"][2:]  # the joint phase trains other resolutions
    assert other.report["subnets"]["0.5@8"]["macs"] < base.report["subnets"]["0.5@12"]["macs"]


@knob("criterion")
def test_criterion_chooses_the_channels(base, data):
    other = run(data, criterion="bn_scale")
    assert other.structures != base.structures


@knob("allocation")
def test_allocation_sets_the_widths(base, data):
    assert widths(run(data, allocation="uniform")) != widths(base)


@knob("steps")
def test_steps_is_the_training_length(base, data):
    other = run(data, steps=6)
    assert len(other.report["losses"]) == 6 and len(base.report["losses"]) == 4
    assert not same_weights(other.model, base.model)


@knob("subnets_per_step")
def test_subnets_per_step_trains_more_subnets(base, data):
    other = run(data, subnets_per_step=4)
    assert other.report["losses"][:2] == base.report["losses"][:2]
    assert other.report["losses"][2] > base.report["losses"][2]  # the same weights: two more sub-networks' losses


@knob("distill_weight")
def test_distill_weight_weighs_inplace_distillation(base, data):
    other = run(data, distill_weight=0.0)
    assert other.report["losses"][:2] == base.report["losses"][:2]
    assert other.report["losses"][2:] != base.report["losses"][2:]


@knob("lr")
def test_lr_sets_the_step_size(base, data):
    assert not same_weights(run(data, lr=1e-2).model, base.model)


@knob("batch_size")
def test_batch_size_sets_the_batches(base, data):
    assert run(data, batch_size=4).report["losses"][0] != base.report["losses"][0]


@knob("calibration_batches")
def test_calibration_batches_sets_the_recalibration(base, data):
    one = OFARResult(base.model, base.report, base.structures, dataclasses.replace(base.config, calibration_batches=1))
    a, b = one.subnet(0.5, 12, data), base.subnet(0.5, 12, data)
    assert not torch.allclose(a.blocks[0].body[1].running_mean, b.blocks[0].body[1].running_mean)


@knob("min_channel_ratio")
def test_min_channel_ratio_floors_the_widths(monkeypatch, data):
    real = channel_scores

    def peaked(model, example, criterion, seed=0, ignored=None):  # one channel of blocks.0.body.0 dominates
        scores = real(model, example, criterion, seed, ignored)
        scores["blocks.0.body.0"] = torch.tensor([100.0] + [1e-3] * 7)
        return scores

    monkeypatch.setattr(ofar_module, "channel_scores", peaked)
    low, high = (widths(run(data, rates=(0.5,), min_channel_ratio=m))[0.5]["blocks.0.body.0"] for m in (0.1, 0.5))
    assert low == 1 and high == 4  # the global threshold keeps the peak only, unless the floor keeps half


@knob("tolerance")
def test_tolerance_bounds_the_budget_error(data):
    model = tiny_cnn()
    example = data[0][:1]
    groups = channel_groups(model, example)
    scores = channel_scores(model, example, "l1")
    floor = WidthCost(model, example).fraction(global_widths(groups, scores, 0.0, 0.1))
    rate = round(floor / 1.1, 4)  # the narrowest sub-network is 10% over this budget
    with pytest.raises(BudgetError):
        run(data, rates=(rate,), max_search_steps=0, tolerance=0.01)
    result = run(data, rates=(rate,), max_search_steps=0, tolerance=0.2)
    assert abs(result.report["subnets"][f"{rate:g}@16"]["flops_fraction"] / rate - 1) <= 0.2


@knob("seed")
def test_seed_sets_the_batches(base, data):
    assert run(data, seed=1).report["losses"] != base.report["losses"]
