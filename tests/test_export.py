"""ONNX export: the pruning decision runs in the graph; the graph keeps the same tokens per block as PyTorch and
its logits match (dense and every method, batch 1 unpadded and padded batches of varied lengths), int8 graphs,
quantized checkpoints, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import trimformer
from trimformer.core.merging import _descending_ranks
from trimformer.core.packing import packing_index
from trimformer.export import compare, export_onnx
from trimformer.methods import ASViTConfig, EViTConfig, LTPConfig, SaiTConfig, ToMeConfig, TopKConfig
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import random_batch, random_pixels, tiny_bert, tiny_roberta, tiny_vision_model

ATOL = 1e-5  # float32 graph vs eager on the tiny models (measured: below 2e-7)


def _text(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    ids, mask = random_batch(batch, length, seed=seed)
    return {"input_ids": ids, "attention_mask": mask}


def _check_text(model: TokenPrunedModel, path) -> list[dict]:
    """Batch 1 unpadded, then padded batches at two other lengths (dynamic batch and sequence)."""
    results = [compare(model, path, _text(1, 11, seed=1)), compare(model, path, _text(4, 20, seed=5)),
               compare(model, path, _text(3, 27, seed=7))]
    for result in results:
        assert result["kept_equal"], result
        assert result["max_abs_diff"] < ATOL, result
    return results


def _check_vision(model: TokenPrunedModel, path) -> list[dict]:
    results = [compare(model, path, {"pixel_values": random_pixels(b, seed=s)}) for b, s in ((1, 1), (5, 2))]
    for result in results:
        assert result["kept_equal"], result
        assert result["max_abs_diff"] < ATOL, result
    return results


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_dense_text_export_matches_eager(make, tmp_path):
    model = TokenPrunedModel(make())
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.method == "dense" and report.inputs == ["input_ids", "attention_mask"]
    results = _check_text(model, tmp_path / "m.onnx")
    assert results[2]["kept_tokens"][0] == [27, 27, 27]  # every token of the unpadded row, at a length not traced


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2"])
def test_dense_vision_export_matches_eager(family, tmp_path):
    model = TokenPrunedModel(tiny_vision_model(family))
    export_onnx(model, tmp_path / "m.onnx")
    _check_vision(model, tmp_path / "m.onnx")


TEXT_METHODS = {
    "ltp": LTPConfig(final_threshold=0.08, target_flops=None),
    "topk": TopKConfig(final_keep_rate=0.4, target_flops=None),
    "topk_cls": TopKConfig(final_keep_rate=0.4, target_flops=None, score="cls_attention"),
    "evit": EViTConfig(keep_rate=0.5),
    "tome": ToMeConfig(r=3),
}


@pytest.mark.parametrize("name", sorted(TEXT_METHODS))
def test_pruned_text_export_keeps_the_same_tokens(name, tmp_path):
    model = trimformer.prune(tiny_bert(), TEXT_METHODS[name]).eval()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.method == name.split("_")[0]
    results = _check_text(model, tmp_path / "m.onnx")
    kept = np.array(results[1]["kept_tokens"])  # [4 rows, 3 blocks]
    lengths = _text(4, 20, seed=5)["attention_mask"].sum(1).numpy()
    assert (kept[:, -1] < lengths).any()  # tokens were removed in the graph
    assert len(set(kept[:, -1].tolist())) > 1  # rows keep different counts: padding inside the graph
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"TopK", "GatherElements"} <= ops  # the width of the kept tokens is decided in the graph


VISION_METHODS = {
    "sait_topk": ("vit", SaiTConfig(default_level=0.5)),
    "sait_mass": ("vit", SaiTConfig(policy="mass", default_level=0.6)),
    "sait_head_weighted": ("deit", SaiTConfig(score="head_weighted", default_level=0.5)),
    "asvit": ("dinov2", ASViTConfig(init_threshold=1.0)),
    "evit": ("vit", EViTConfig(keep_rate=0.5)),
    "tome": ("deit", ToMeConfig(r=3)),
}


@pytest.mark.parametrize("name", sorted(VISION_METHODS))
def test_pruned_vision_export_keeps_the_same_tokens(name, tmp_path):
    family, config = VISION_METHODS[name]
    model = trimformer.prune(tiny_vision_model(family), config).eval()
    export_onnx(model, tmp_path / "m.onnx")
    results = _check_vision(model, tmp_path / "m.onnx")
    kept = np.array(results[1]["kept_tokens"])  # [5 rows, 4 blocks]
    assert (kept[:, -1] < kept[:, 0]).all()  # tokens were removed


def test_threshold_policy_rows_keep_different_counts_in_the_graph(tmp_path):
    """AS-ViT's thresholds give each image its own count: the graph pads to the longest row and masks the rest."""
    model = trimformer.prune(tiny_vision_model("dinov2"), ASViTConfig(init_threshold=1.0)).eval()
    export_onnx(model, tmp_path / "m.onnx")
    result = compare(model, tmp_path / "m.onnx", {"pixel_values": random_pixels(6, seed=3)})
    assert result["kept_equal"] and result["max_abs_diff"] < ATOL
    assert len({tuple(row) for row in result["kept_tokens"]}) > 1


@pytest.mark.parametrize("scheme", ["dynamic", "qdq"])
def test_int8_export(scheme, tmp_path):
    model = trimformer.prune(tiny_bert(), TEXT_METHODS["topk"]).eval()
    calibration = [_text(8, 20, seed=s) for s in range(3)]
    report = export_onnx(model, tmp_path / "m.onnx", int8=scheme, calibration=calibration,
                         check_inputs=_text(4, 20, seed=5))
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops) if scheme == "dynamic" else \
        {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report.int8 == scheme and (tmp_path / "m.fp32.onnx").is_file()
    assert 0 < report.check["max_rel_diff"] < 0.05  # int8 really changes the numbers, a little


def test_pwlq_checkpoint_exports_dequantized_weights(tmp_path):
    model = trimformer.prune(tiny_bert(), TEXT_METHODS["ltp"]).eval()
    trimformer.quantize_(model, trimformer.PWLQConfig(wbits=4, act=None))
    export_onnx(model, tmp_path / "m.onnx")
    _check_text(model, tmp_path / "m.onnx")  # the graph computes what the quantized model computes
    assert type(model.model.bert.encoder.layer[0].attention.self.query).__name__ == "QuantLinear"  # left as it was


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = TokenPrunedModel(tiny_bert())  # the wrapper in train mode around an eval-mode model
    inputs = _text(2, 12, seed=0)
    with torch.no_grad():
        before = model(**inputs).logits
    export_onnx(model, tmp_path / "m.onnx")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)
    assert model.training and not model.model.training


def test_export_errors(tmp_path):
    model = TokenPrunedModel(tiny_bert())
    with pytest.raises(ValueError, match=".onnx"):
        export_onnx(model, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="int8"):
        export_onnx(model, tmp_path / "m.onnx", int8="int4")
    with pytest.raises(TypeError, match="TokenPrunedModel"):
        export_onnx(tiny_bert(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="calibration"):
        export_onnx(model, tmp_path / "m.onnx", int8="qdq")


def test_packing_index_is_a_stable_partition():
    keep = torch.rand(5, 13, generator=torch.Generator().manual_seed(0)) > 0.5
    index, packed = packing_index(keep)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :index.shape[1]]
    assert torch.equal(index, order)
    assert torch.equal(packed, torch.arange(index.shape[1])[None] < keep.sum(1, keepdim=True))


def test_descending_ranks_equal_a_stable_sort():
    values = torch.randint(0, 4, (3, 9), generator=torch.Generator().manual_seed(0)).float()  # many ties
    values[0, 2] = float("-inf")
    expected = values.sort(dim=1, descending=True, stable=True).indices.argsort(dim=1)
    assert torch.equal(_descending_ranks(values), expected)


def test_cli_export(tmp_path, tokenizer):
    import json
    import os
    import subprocess
    import sys

    from trimformer.checkpoint import save_pruned

    model = tiny_bert(num_labels=2, vocab_size=32, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    save_pruned(trimformer.prune(model, LTPConfig(final_threshold=0.08, target_flops=None)), tmp_path / "ckpt",
                tokenizer)
    rows = [{"text": "good fun movie the plot was great", "label": "pos"}, {"text": "bad boring", "label": "neg"}] * 8
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    command = [sys.executable, "-m", "trimformer.cli", "export", str(tmp_path / "ckpt"), "--out",
               str(tmp_path / "m.onnx"), "--data", str(data), "--check", "8", "--accuracy-limit", "16", "--int8",
               "--json", str(tmp_path / "r.json")]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "ltp" and report["int8"] == "dynamic" and report["check"]["rows"] == 8
    assert report["onnx_accuracy"]["num_examples"] == 16 and 0 <= report["onnx_accuracy"]["accuracy"] <= 100
    bad = subprocess.run(command[:6] + [str(tmp_path / "m.txt"), "--check", "0"], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert bad.returncode == 2 and "trimformer export: error" in bad.stderr and ".onnx" in bad.stderr


def test_benchmark_on_onnxruntime_has_the_torch_keys():
    from trimformer.testing import make_tokenizer, synthetic_text_data

    model = trimformer.prune(tiny_bert(), TEXT_METHODS["ltp"]).eval()
    common = dict(batch_size=4, tokenizer=make_tokenizer(), num_samples=8, repeats=1, accuracy=False, masked=False)
    data = synthetic_text_data(16)
    on_torch = trimformer.benchmark(model, data, **common)
    on_ort = trimformer.benchmark(model, data, runtime="onnxruntime", **common)
    assert on_ort["runtime"] == "onnxruntime" and on_torch["runtime"] == "torch"
    assert set(on_ort) == set(on_torch)
    assert on_ort["pruned_samples_per_s"] > 0 and on_ort["flops_ratio"] == on_torch["flops_ratio"]
    assert not model.execution.traceable  # the model is left as it was
    with pytest.raises(ValueError, match="runtime"):
        trimformer.benchmark(model, data, runtime="tensorrt", **common)


def test_docs_export_snippet_runs(tmp_path):
    """The first Python block of docs/export.md runs as written (its paths moved into tmp_path)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs/export.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0].replace("/tmp/ltp.onnx", str(tmp_path / "ltp.onnx"))
    exec(compile(snippet, "docs/export.md", "exec"), {})
    assert (tmp_path / "ltp.onnx").is_file()
