"""The prepacked oneDNN inference linear: same results as F.linear, used only where it applies."""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, tiny_bert_config
from torch import nn
from transformers import BertForSequenceClassification

from trimformer.core import linear_kernel as lk
from trimformer.core.linear_kernel import linear, linear_kernel, onednn_available, set_linear_kernel
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no prepacked oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 24), (1, 7, 24), (3, 1, 24)])
def test_prepacked_linear_equals_f_linear(shape):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    x = torch.randn(*shape)
    with torch.no_grad(), linear_kernel("onednn"):
        got = linear(layer, x)
    assert lk._PACKED.get(layer) is not None  # the packed path ran
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_packing_follows_an_in_place_weight_change():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(2, 3, 16)
    with torch.no_grad(), linear_kernel("onednn"):
        linear(layer, x)
        layer.weight.mul_(-2.0)
        layer.bias.add_(1.0)
        got = linear(layer, x)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_auto_packs_only_large_weights():
    torch.manual_seed(0)
    small, large = nn.Linear(64, 64), nn.Linear(512, lk.AUTO_MIN_WEIGHT_ELEMENTS // 512)
    with torch.no_grad(), linear_kernel("auto"):
        linear(small, torch.randn(3, 64))
        got = linear(large, torch.randn(3, 512))
    assert small not in lk._PACKED and large in lk._PACKED
    assert got.shape == (3, lk.AUTO_MIN_WEIGHT_ELEMENTS // 512)


def test_gradients_and_torch_kernel_use_the_module_itself():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    out = linear(layer, x)  # gradients on: the module's own forward
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    fresh = nn.Linear(16, 8)
    with torch.no_grad(), linear_kernel("torch"):
        assert torch.equal(linear(fresh, x), fresh(x))
    assert fresh not in lk._PACKED


def test_unknown_kernel_is_refused_and_the_context_restores():
    with pytest.raises(ValueError, match="unknown linear kernel"):
        set_linear_kernel("fastest")
    before = lk.current_linear_kernel()
    with linear_kernel("torch"):
        assert lk.effective_linear_kernel() == "torch"
    assert lk.current_linear_kernel() == before


@needs_onednn
def test_pruned_model_same_predictions_with_either_kernel():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    pruned = TokenPrunedModel(model, LTPPolicy(model.config.num_hidden_layers, LTPConfig(final_threshold=0.2)))
    ids, mask = random_batch(batch=4, length=12)
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        with linear_kernel("torch"):
            ref = pruned(**batch)
        with linear_kernel("onednn"):
            got = pruned(**batch)
        with linear_kernel("onednn"), pruned.pruning_disabled():
            dense = pruned(**batch).logits
    assert (ref.n_out < ref.n_in).any()  # something was pruned
    assert torch.equal(got.n_out, ref.n_out)  # the same tokens kept
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense, model(**batch).logits, atol=1e-5, rtol=1e-5)
