"""Every test builds its tiny transformers models through :mod:`trimformer.testing`, so that one change of a default
reaches the whole suite. A test module that calls a transformers model class itself fails here, unless it is on the
allow-list below with the reason it has to."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Model classes: the task heads and the bare encoders trimformer.testing builds, and GPT-2 (the usual "not supported"
# stand-in). A call through an attribute (``transformers.BertModel(...)``, ``module.Dinov2Model(...)``) counts too,
# as does ``AnyModelClass.from_config(...)``.
MODEL_CLASS = re.compile(r"^\w*(ForSequenceClassification|ForImageClassification\w*|ForMaskedLM|ForTokenClassification"
                         r"|ForQuestionAnswering)$|^(Bert|ViT|Dinov2|DeiT|Roberta|GPT2|DistilBert)Model$")

# (file, class) -> why this test builds the model itself. Keep it short: each entry must still be used.
ALLOWED: dict[tuple[str, str], str] = {
    ("test_pruned_model.py", "GPT2Model"): "a GPT-2, to test that unsupported architectures are refused; "
                                           "trimformer.testing builds only supported families",
    ("test_vision_assets.py", "Dinov2Model"): "the real DINOv2-S/14 architecture on the meta device (no weights), "
                                              "for the ONNX converter's state-dict key and shape check; not a tiny "
                                              "test model",
}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in ("from_config", "_from_config"):
        func = func.value  # SomeModel.from_config(config)
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def model_constructions(source: str) -> list[tuple[str, int]]:
    """(class name, line) of every call of a transformers model class in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _called_name(node)
            if name is not None and MODEL_CLASS.match(name):
                found.append((name, node.lineno))
    return sorted(found, key=lambda item: item[1])


def test_the_scan_finds_direct_constructions():
    source = """
import transformers
from transformers import BertConfig, BertForSequenceClassification, ViTModel
from trimformer.testing import tiny_bert
a = BertForSequenceClassification(BertConfig())
b = transformers.DeiTForImageClassificationWithTeacher(config)
c = ViTModel(config, add_pooling_layer=False)
d = transformers.AutoModelForSequenceClassification.from_config(config)
e = tiny_bert(num_labels=2)
f = BertConfig(hidden_size=32)
"""
    assert model_constructions(source) == [("BertForSequenceClassification", 5),
                                           ("DeiTForImageClassificationWithTeacher", 6), ("ViTModel", 7),
                                           ("AutoModelForSequenceClassification", 8)]


def test_tests_build_their_models_through_trimformer_testing():
    offenders, used = [], set()
    for path in sorted(TESTS.glob("*.py")):
        for name, line in model_constructions(path.read_text(encoding="utf-8")):
            if (path.name, name) in ALLOWED:
                used.add((path.name, name))
            else:
                offenders.append(f"{path.name}:{line}: {name}(...)")
    assert not offenders, ("build tiny models with trimformer.testing (tiny_bert, tiny_roberta, tiny_vision_model), "
                           "or add the exception to ALLOWED with its reason:\n" + "\n".join(offenders))
    assert used == set(ALLOWED), f"stale allow-list entries: {sorted(set(ALLOWED) - used)}"
