"""The prepacked oneDNN inference linear: same results as F.linear, used only where it applies, and a tested
fallback where the PyTorch build lacks it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trimformer.engine import ExecutionOptions, onednn
from trimformer.engine.linears import AUTO_MIN_WEIGHT_ELEMENTS, Linears, WeightCache
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import random_batch, tiny_bert

needs_onednn = pytest.mark.skipif(not onednn.AVAILABLE, reason="this PyTorch build has no prepacked oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 24), (1, 7, 24), (3, 1, 24)])
def test_prepacked_linear_equals_f_linear(shape):
    torch.manual_seed(0)
    layer, cache = nn.Linear(24, 40), WeightCache()
    x = torch.randn(*shape)
    with torch.no_grad():
        got = Linears("onednn", cache)(layer, x)
    assert cache.holds(layer, "onednn")  # the packed path ran
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_packing_follows_an_in_place_weight_change():
    torch.manual_seed(0)
    layer, linears = nn.Linear(16, 8), Linears("onednn", WeightCache())
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        linears(layer, x)
        layer.weight.mul_(-2.0)
        layer.bias.add_(1.0)
        got = linears(layer, x)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_auto_packs_only_large_weights():
    torch.manual_seed(0)
    small, large = nn.Linear(64, 64), nn.Linear(512, AUTO_MIN_WEIGHT_ELEMENTS // 512)
    cache = WeightCache()
    with torch.no_grad():
        Linears("auto", cache)(small, torch.randn(3, 64))
        got = Linears("auto", cache)(large, torch.randn(3, 512))
    assert not cache.holds(small, "onednn") and cache.holds(large, "onednn")
    assert got.shape == (3, AUTO_MIN_WEIGHT_ELEMENTS // 512)


def test_gradients_and_torch_kernel_use_the_module_itself():
    torch.manual_seed(0)
    layer, cache = nn.Linear(16, 8), WeightCache()
    x = torch.randn(4, 16, requires_grad=True)
    out = Linears("onednn", cache)(layer, x)  # gradients on: the module's own forward
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    fresh = nn.Linear(16, 8)
    with torch.no_grad():
        assert torch.equal(Linears("torch", cache)(fresh, x), fresh(x))
    assert not cache.holds(fresh, "onednn") and not cache.holds(layer, "onednn")


def test_fallback_without_onednn_runs_f_linear():
    """A build without the private oneDNN ops: every kernel falls back to the module's own forward."""
    torch.manual_seed(0)
    layer, cache = nn.Linear(600, 600), WeightCache()
    x = torch.randn(3, 600)
    with torch.no_grad():
        for kernel in ("auto", "onednn"):
            assert torch.equal(Linears(kernel, cache, use_onednn=False)(layer, x), layer(x))
    assert not cache.holds(layer, "onednn")


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="unknown linear kernel"):
        ExecutionOptions(linear_kernel="fastest")
    assert ExecutionOptions(linear_kernel="torch").effective_linear_kernel == "torch"


@needs_onednn
def test_pruned_model_same_predictions_with_either_kernel():
    model = tiny_bert()
    pruned = TokenPrunedModel(model, LTPPolicy(model.config.num_hidden_layers, LTPConfig(final_threshold=0.2)))
    ids, mask = random_batch(batch=4, length=12)
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        with pruned.options(linear_kernel="torch"):
            ref = pruned(**batch)
        with pruned.options(linear_kernel="onednn"):
            got = pruned(**batch)
        with pruned.options(linear_kernel="onednn", pruning=False):
            dense = pruned(**batch).logits
    assert (ref.n_out < ref.n_in).any()  # something was pruned
    assert torch.equal(got.n_out, ref.n_out)  # the same tokens kept
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense, model(**batch).logits, atol=1e-5, rtol=1e-5)
