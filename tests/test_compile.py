"""torch.compile of pruned models in traceable execution: one graph, no break, for every method (Dynamo with
data-dependent sizes captured), same outputs as eager. The inductor run is opt-in (TRIMFORMER_SLOW=1): its C++
compilation takes minutes on a 2-core CPU."""

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
    compiled = compile_pruned(model)  # inductor, a graph break after each decision
    with torch.no_grad():
        got, want = compiled(**inputs(3, 0)), model(**inputs(3, 0))
    assert torch.equal(got.n_out, want.n_out) and torch.allclose(got.logits, want.logits, atol=1e-5)
