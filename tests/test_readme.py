"""The README's Python API snippet runs as written, on tiny models and data (no downloads)."""

import os
import re
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert, tiny_vision_model

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_api_snippets() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_python_api_snippet_runs_on_tiny_models(tmp_path, capsys):
    snippets = _python_api_snippets()
    assert snippets, "the README lost its Python API snippet"
    torch.manual_seed(0)
    namespace = {
        "model": tiny_bert(seed=None, num_labels=2, vocab_size=32),
        "tokenizer": make_tokenizer(),
        "train": synthetic_text_data(48),
        "vit": tiny_vision_model("dinov2", seed=None, num_labels=3),
        "images": torch.randn(2, 3, 32, 32),
        "train_images": TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))),
    }
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the snippet writes out/...
    try:
        for code in snippets:
            exec(compile(code, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "out" / "ltp-w4a8").is_dir()
    assert namespace["meta"]["quant_config"]["wbits"] == 4
    assert namespace["out"].logits.shape == (2, 3)
