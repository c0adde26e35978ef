"""The OFAR family as one checkpoint: a folder with ``model.safetensors`` (the shared dense weights) and
``ofar.json`` (the config, every rate's kept channels, the dense architecture, the search and training record, the
weights' sha256). Any listed (rate, resolution) sub-network is extracted from the loaded family with
:meth:`~trimformer.structured.ofar.OFARResult.subnet` (a physically smaller model that ``trimformer.save`` takes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from trimformer import __version__
from trimformer.checkpoint.meta import WEIGHTS_FILE, CheckpointError
from trimformer.io_utils import atomic_write_dir, atomic_write_json, file_sha256
from trimformer.structured.graph import StructureError, channel_groups, check_structure
from trimformer.structured.ofar import OFARResult
from trimformer.structured.ofar_config import OFARConfig
from trimformer.structured.store import _dense_model, read_record, read_weights
from trimformer.vision.cnn_zoo import cnn_architecture

OFAR_FILE = "ofar.json"
FORMAT_VERSION = 1


def save_ofar(result: OFARResult, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the family (shared weights + masks per rate + record) to the folder ``path``, atomically. An existing
    path is replaced only when it is an OFAR checkpoint and ``overwrite`` is set."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not (path.is_dir() and not path.is_symlink() and (path / OFAR_FILE).is_file()):
            raise CheckpointError(f"{path} exists and is not an OFAR checkpoint: it is never replaced; choose another "
                                  "output path")
        if not overwrite:
            raise CheckpointError(f"{path} already holds an OFAR checkpoint; pass overwrite=True to replace it")
    model = result.model
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format_version": FORMAT_VERSION, "trimformer_version": __version__, "torch_version": torch.__version__,
            "architecture": cnn_architecture(model), "model_class": type(model).__name__,
            "config": result.config.to_dict(),
            "structures": [{"rate": rate, "kept": kept} for rate, kept in result.structures.items()],
            "report": result.report}

    def write(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_json(folder / OFAR_FILE, {**meta, "files": {WEIGHTS_FILE: file_sha256(folder / WEIGHTS_FILE)}})

    try:
        atomic_write_dir(path, write)
    except OSError as err:
        raise CheckpointError(f"cannot write {path} ({err}); the previous content of that path is unchanged") from err
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    required = ("format_version", "config", "structures", "report", "files", "model_class")
    return read_record(path, OFAR_FILE, required, "OFAR", "save_ofar", FORMAT_VERSION)


def load_ofar(path: str | os.PathLike[str], model: nn.Module | None = None, verify: bool = True) -> OFARResult:
    """The family :func:`save_ofar` wrote. ``model``: a dense model of the recorded class to load the shared weights
    into (needed when the architecture is not a recorded cnn_zoo one). ``verify`` checks the weights' sha256."""
    path = Path(path)
    meta = _read_meta(path)
    state = read_weights(path, meta, verify)
    dense = _dense_model(path, meta, model)
    try:
        dense.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the model ({err})") from err
    config = OFARConfig.from_dict(meta["config"])
    structures = {float(s["rate"]): {k: list(v) for k, v in s["kept"].items()} for s in meta["structures"]}
    groups = channel_groups(dense.eval(), torch.zeros(meta["report"]["input_shape"]))
    try:
        for kept in structures.values():
            check_structure(groups, kept)
    except StructureError as err:
        raise CheckpointError(f"{path}: a recorded structure does not fit the model ({err})") from err
    return OFARResult(dense.eval(), meta["report"], structures, config)
