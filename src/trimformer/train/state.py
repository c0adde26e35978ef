"""What a saved training state belongs to, so that ``--resume`` never continues another run.

A state folder (the CLI's ``OUT.state``) holds ``run.json``, the record of the run that writes it: the starting
weights' digest, the data's size and digest, the method and its config, the ``TrainConfig``, the number of steps
and the trimformer version. A later run resumes from the folder only when its own record is equal; otherwise it is
refused with the list of differences, or, with ``restart``, the old state is discarded and training starts over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from trimformer import __version__
from trimformer.io_utils import atomic_write_json

RUN_RECORD = "run.json"


class StaleStateError(ValueError):
    """A saved training state that belongs to another run (model, data or recipe)."""


def weights_digest(module: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and values of ``module``'s state dict (16 hex digits)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Path):
        stat = value.stat() if value.exists() else None
        h.update(f"{value}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode())
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(repr(value).encode())


_DATA_FIELDS = ("texts", "labels", "label_names", "samples", "images", "resolution", "split")


def _feed_data(h: Any, data: Any) -> None:
    if isinstance(data, Subset):
        _feed_data(h, data.dataset)
        _feed(h, list(data.indices))
    elif isinstance(data, TensorDataset):
        _feed(h, list(data.tensors))
    elif any(hasattr(data, f) for f in ("texts", "samples", "images")):  # trimformer's text and image datasets
        for field in _DATA_FIELDS:
            _feed(h, getattr(data, field, None))
    else:  # any other map-style dataset: its items
        for i in range(len(data)):
            _feed(h, data[i])


def data_fingerprint(data: Sequence) -> dict[str, Any]:
    """{"size", "sha256"} of a training set: its items (text data, tensors) or, for image folders, the files' names,
    sizes and modification times."""
    h = hashlib.sha256()
    _feed_data(h, data)
    return {"size": len(data), "sha256": h.hexdigest()[:16]}


def run_record(model: nn.Module, data: Sequence, train_config: Any, steps: Any, method: str,
               method_config: Mapping[str, Any] | None = None, about: Mapping[str, Any] | None = None) -> dict:
    """The record a state folder is checked against (computed before any training changes ``model``)."""
    return {
        "trimformer_version": __version__,
        "model_weights_sha256": weights_digest(model),
        "data": data_fingerprint(data),
        "method": method,
        "method_config": dict(method_config or {}),
        "train": train_config.to_dict(),
        "steps": steps,
        **({"about": dict(about)} if about else {}),
    }


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now)):
            if key == "about":
                continue  # where the model and data were read from: shown, not compared (the digests are)
            out += _differences(saved.get(key), now.get(key), f"{prefix}{key}.")
        return out
    if saved != now:
        return [f"{prefix.rstrip('.')}: saved {saved!r}, now {now!r}"]
    return []


def _is_state_folder(path: Path) -> bool:
    return (path / RUN_RECORD).is_file()


def open_state(state_dir: str | Path, record: Mapping[str, Any], restart: bool = False) -> Path:
    """Make ``state_dir`` the state folder of the run ``record`` describes: create it, continue it when its record
    is equal, discard it when ``restart``; a state of another run is refused (:class:`StaleStateError`), and a file
    or a folder of the user's at ``state_dir`` is never touched."""
    path = Path(state_dir)
    if path.exists() and not path.is_dir():
        raise StaleStateError(f"{path} is a file, not a training-state folder; move it away or choose another --out")
    if path.is_dir() and any(path.iterdir()) and not _is_state_folder(path):
        raise StaleStateError(f"{path} exists and is not a trimformer training-state folder (no {RUN_RECORD}); "
                              "move it away or choose another --out")
    if _is_state_folder(path):
        try:
            saved = json.loads((path / RUN_RECORD).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            saved = {}
        diffs = _differences(saved, json.loads(json.dumps(dict(record))))
        if diffs and not restart:
            raise StaleStateError(
                f"{path} holds the training state of another run; it differs in: " + "; ".join(diffs)
                + ". Pass --restart (restart=True in Python) to discard it and train from the start, or choose "
                  "another --out")
        if diffs or restart:
            shutil.rmtree(path)
    elif restart and path.is_dir():
        shutil.rmtree(path)
    if not _is_state_folder(path):
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / RUN_RECORD, dict(record))
    return path


def discard_state(state_dir: str | Path) -> None:
    """Remove a finished run's state folder (only a folder :func:`open_state` made)."""
    path = Path(state_dir)
    if _is_state_folder(path):
        shutil.rmtree(path)
