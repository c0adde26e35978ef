"""Saving and loading a structurally pruned model: a folder with ``model.safetensors`` (the small model's weights)
and ``structured.json`` (its record, :mod:`trimformer.structured.record`, with the weights' sha256).

Loading rebuilds the dense architecture (from the recorded :mod:`trimformer.vision.cnn_zoo` name, or from a dense
model the caller passes for other architectures), prunes it to the recorded kept channels with Torch-Pruning,
checks every layer's width against the record, and loads the weights (safetensors only, never pickle). Writes are
atomic (:mod:`trimformer.io_utils`); a save replaces only a folder it wrote, and only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from trimformer import __version__
from trimformer.checkpoint.meta import WEIGHTS_FILE, CheckpointError
from trimformer.checkpoint.sources import check_finite
from trimformer.io_utils import atomic_write_dir, atomic_write_json, file_sha256
from trimformer.structured.graph import StructureError, layer_widths, prune_channels_
from trimformer.structured.record import RECORD_ATTR, structure_record

STRUCTURE_FILE = "structured.json"
FORMAT_VERSION = 1


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() or path.is_symlink():
        ours = path.is_dir() and not path.is_symlink() and (path / STRUCTURE_FILE).is_file()
        if not ours:
            raise CheckpointError(f"{path} exists and is not a structured-pruning checkpoint: it is never replaced. "
                                  "Choose another output path, or move it away yourself")
        if not overwrite:
            raise CheckpointError(f"{path} already holds a structured-pruning checkpoint; pass overwrite=True to "
                                  "replace it, or choose another output path")


def save_structured(model: nn.Module, path: str | os.PathLike[str], extra: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write a model made by :func:`~trimformer.structured.record.pruned_copy` (or a structured method) to the
    folder ``path``, atomically; ``extra`` adds JSON values of your own (metrics, data...). Returns the folder."""
    record = structure_record(model)
    if record is None:
        raise ValueError("save_structured saves structurally pruned models (trimformer.structured); this model has "
                         "no pruning record. Prune it first (e.g. structured_prune or pruned_copy)")
    path = Path(path)
    _check_output(path, overwrite)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format_version": FORMAT_VERSION, "trimformer_version": __version__, "torch_version": torch.__version__,
            **record, "widths": layer_widths(model), "extra": dict(extra or {})}

    def write(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        digest = file_sha256(folder / WEIGHTS_FILE)
        atomic_write_json(folder / STRUCTURE_FILE, {**meta, "files": {WEIGHTS_FILE: digest}})
        os.chmod(folder, 0o755)
        for file in folder.iterdir():
            os.chmod(file, 0o644)

    try:
        atomic_write_dir(path, write)
    except OSError as err:
        raise CheckpointError(f"cannot write {path} ({err}); the previous content of that path is unchanged") from err
    return path


def read_record(path: Path, file_name: str, required: tuple[str, ...], kind: str, writer: str,
                format_version: int) -> dict[str, Any]:
    """The JSON record ``file_name`` of a folder ``writer`` wrote, its keys and format version checked; a clear
    FileNotFoundError / CheckpointError otherwise. ``kind`` names the checkpoint in messages (e.g. "OFAR")."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; give the folder {writer} wrote")
    try:
        meta = json.loads((path / file_name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        article = "an" if kind[:1].upper() in "AEIOU" else "a"
        raise CheckpointError(f"{path} has no {file_name}: it is not {article} {kind} checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / file_name} is corrupt ({err}); re-create the checkpoint") from err
    missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{path / file_name} lacks {missing}; re-create the checkpoint")
    if meta["format_version"] != format_version:
        raise CheckpointError(f"{path}: {kind} format {meta['format_version']!r} is not readable by trimformer "
                              f"{__version__} (format {format_version})")
    return meta


def read_weights(path: Path, meta: dict[str, Any], verify: bool) -> dict[str, torch.Tensor]:
    """The finite weights of a saved folder, their sha256 checked against ``meta["files"]`` when ``verify``."""
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing; re-create the checkpoint")
    if verify and file_sha256(weights) != meta["files"].get(WEIGHTS_FILE):
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is corrupt (its sha256 differs from the recorded one); "
                              "re-create the checkpoint")
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{weights} cannot be read ({err}); re-create the checkpoint") from err
    check_finite(state, path)
    return state


def read_structure(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record of a saved structured model (validated keys), CheckpointError when missing or corrupt."""
    required = ("format_version", "groups", "widths", "input_shape", "files", "model_class")
    return read_record(Path(path), STRUCTURE_FILE, required, "structured-pruning", "save_structured", FORMAT_VERSION)


def _dense_model(path: Path, meta: dict[str, Any], model: nn.Module | None) -> nn.Module:
    if model is not None:
        if structure_record(model) is not None:
            raise ValueError("load_structured needs the dense model to shrink; this one is already pruned")
        if type(model).__name__ != meta["model_class"]:
            raise CheckpointError(f"{path} holds a pruned {meta['model_class']}; the model given is a "
                                  f"{type(model).__name__}")
        return model
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or "name" not in arch:
        raise ValueError(f"{path}: the architecture is not recorded (the model was not built by "
                         "trimformer.vision.cnn_zoo.build_cnn); pass model=<a freshly built dense model>")
    from trimformer.vision.cnn_zoo import rebuild_cnn

    try:
        return rebuild_cnn(arch)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: the recorded architecture {arch!r} cannot be built ({err})") from err


def load_structured(path: str | os.PathLike[str], model: nn.Module | None = None,
                    verify: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(the small model in eval mode, its record) from a folder :func:`save_structured` wrote. ``model``: a dense
    model of the recorded class to shrink (needed when the architecture is not a recorded cnn_zoo one; it is
    modified in place). ``verify`` checks the weights' sha256."""
    path = Path(path)
    meta = read_structure(path)
    state = read_weights(path, meta, verify)
    dense = _dense_model(path, meta, model).eval()
    example = torch.zeros(*meta["input_shape"])
    kept = {name: g["kept"] for name, g in meta["groups"].items()}
    try:
        prune_channels_(dense, example, kept, meta.get("ignored"))
    except StructureError as err:
        raise CheckpointError(f"{path}: the recorded structure does not fit the model ({err})") from err
    if layer_widths(dense) != meta["widths"]:
        raise CheckpointError(f"{path}: the rebuilt layer widths differ from the recorded ones; the checkpoint was "
                              "made from another architecture")
    try:
        dense.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the pruned model ({err})") from err
    record = {k: meta[k] for k in ("architecture", "model_class", "input_shape", "ignored", "groups", "widths",
                                   "recipe") if k in meta}
    setattr(dense, RECORD_ATTR, record)
    return dense.eval(), meta
