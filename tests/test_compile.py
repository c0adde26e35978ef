"""torch.compile of pruned models in traceable execution: one graph, no break, for every method (Dynamo with
data-dependent sizes captured), same outputs as eager; fixed-count policies on unpadded inputs need no
data-dependent size at all. The inductor runs are opt-in (TRIMFORMER_SLOW=1): their C++ compilation takes minutes
on a 2-core CPU."""

from __future__ import annotations

import os

import pytest
import torch

import trimformer
from trimformer.export import compile_pruned
from trimformer.methods import EViTConfig, LTPConfig, SaiTConfig, ToMeConfig, TopKConfig
from trimformer.testing import random_batch, random_pixels, tiny_bert, tiny_vision_model

CASES = {
    "topk": ("text", TopKConfig(final_keep_rate=0.4, target_flops=None)),
    "ltp": ("text", LTPConfig(final_threshold=0.08, target_flops=None)),
    "sait": ("vit", SaiTConfig(default_level=0.5)),
    "evit": ("vit", EViTConfig(keep_rate=0.5)),
    "tome": ("deit", ToMeConfig(r=3)),
}


def _model_and_inputs(name: str):
    family, config = CASES[name]
    model = trimformer.prune(tiny_bert() if family == "text" else tiny_vision_model(family), config).eval()

    def inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
        if family == "text":
            ids, mask = random_batch(batch, 20, seed=seed)
            return {"input_ids": ids, "attention_mask": mask}
        return {"pixel_values": random_pixels(batch, seed=seed)}

    return model, inputs


@pytest.mark.parametrize("name", sorted(CASES))
def test_traceable_forward_is_one_graph(name):
    model, inputs = _model_and_inputs(name)
    model.set_options(traceable=True)

    def forward(**batch):
        out = model(**batch)
        return out.logits, out.n_out

    with torch.no_grad(), torch._dynamo.config.patch(capture_scalar_outputs=True,
                                                     capture_dynamic_output_shape_ops=True):
        explained = torch._dynamo.explain(forward)(**inputs(3, 0))
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def _full_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same inputs without an attention mask: every row all real tokens (images always are)."""
    return {k: v for k, v in batch.items() if k != "attention_mask"}


@pytest.mark.parametrize("name", ["sait", "evit", "topk"])
def test_fixed_count_policies_on_full_rows_have_no_data_dependent_size(name):
    """On unpadded inputs a fixed-count policy packs to a width known from the shapes: Dynamo finds one graph
    without being allowed data-dependent sizes (what inductor and CUDA graphs need)."""
    model, inputs = _model_and_inputs(name)
    batch = _full_rows(inputs(3, 0))
    with torch.no_grad():
        eager = model(**batch)
        model.set_options(traceable=True)
        traced = model(**batch)  # also reads the policy's cached floats eagerly, as compile_pruned does

        def forward(**b):
            out = model(**b)
            return out.logits, out.n_out

        explained = torch._dynamo.explain(forward)(**batch)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    assert torch.equal(traced.n_out, eager.n_out) and torch.allclose(traced.logits, eager.logits, atol=1e-6)


@pytest.mark.parametrize(("level", "min_keep"), [(0.3, 1), (0.45, 1), (0.999, 1), (0.2, 7)])
def test_sait_fixed_width_is_the_exact_count(level, min_keep):
    """The width from the shapes equals the count the decision keeps (else tokens would be lost or invented)."""
    model = trimformer.prune(tiny_vision_model("vit"), SaiTConfig(default_level=level, min_keep=min_keep)).eval()
    pixels = random_pixels(2, seed=3)
    with torch.no_grad():
        eager = model(pixel_values=pixels)
        with model.options(traceable=True):
            traced = model(pixel_values=pixels)
    assert torch.equal(traced.n_out, eager.n_out)
    assert torch.allclose(traced.logits, eager.logits, atol=1e-6)


def test_padded_rows_keep_their_own_counts_in_traceable_execution():
    """With padding the counts differ per row, so the width stays data-dependent (and the result exact)."""
    model, inputs = _model_and_inputs("topk")
    batch = inputs(4, 2)
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        eager = model(**batch)
        with model.options(traceable=True):
            traced = model(**batch)
    assert torch.equal(traced.n_out, eager.n_out) and torch.allclose(traced.logits, eager.logits, atol=1e-6)


@pytest.mark.parametrize("name", ["topk"])
def test_compiled_in_graph_matches_eager(name):
    model, inputs = _model_and_inputs(name)
    torch._dynamo.reset()
    compiled = compile_pruned(model, backend="aot_eager")  # fullgraph: a break would raise
    with torch.no_grad():
        for batch, seed in ((3, 0), (1, 1)):
            got, want = compiled(**inputs(batch, seed)), model(**inputs(batch, seed))
            assert torch.equal(got.n_out, want.n_out)
            assert torch.allclose(got.logits, want.logits, atol=1e-5)


@pytest.mark.skipif(os.environ.get("TRIMFORMER_SLOW") != "1", reason="inductor: minutes of C++ builds")
def test_inductor_compiled_matches_eager():
    model, inputs = _model_and_inputs("sait")
    torch._dynamo.reset()
    compiled = compile_pruned(model, in_graph=True)  # inductor, fullgraph: images are full rows, widths static
    with torch.no_grad():
        for batch, seed in ((3, 0), (1, 1)):
            got, want = compiled(**inputs(batch, seed)), model(**inputs(batch, seed))
            assert torch.equal(got.n_out, want.n_out) and torch.allclose(got.logits, want.logits, atol=1e-5)


@pytest.mark.skipif(os.environ.get("TRIMFORMER_SLOW") != "1", reason="inductor: minutes of C++ builds")
def test_inductor_compiled_padded_text_matches_eager():
    model, inputs = _model_and_inputs("topk")
    torch._dynamo.reset()
    compiled = compile_pruned(model)  # inductor: padded rows, a graph break after each decision
    with torch.no_grad():
        got, want = compiled(**inputs(3, 0)), model(**inputs(3, 0))
    assert torch.equal(got.n_out, want.n_out) and torch.allclose(got.logits, want.logits, atol=1e-5)
