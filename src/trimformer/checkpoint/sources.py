"""Where a model comes from: a local folder or a hub name, read with clear errors instead of tracebacks.

A name that looks like a path (absolute, ``./``, ``../``, ``~``, more than one ``/``, a backslash, or a parent
folder that exists here) must exist: it is never sent to the hub (which would retry for half a minute and then
blame the network). A hub name is read from the local cache first and downloaded only when it is not there (never
when ``HF_HUB_OFFLINE`` is set).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trimformer.checkpoint.meta import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_path(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` means a local file or folder rather than a hub id (``org/model`` or ``model``)."""
    if isinstance(name, Path):
        return True
    text = str(name)
    if text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", "..") or "\\" in text:
        return True
    if text.count("/") > 1 or not _HUB_ID.match(text):
        return True
    return "/" in text and Path(text).parent.is_dir()


def require_local(name: str | os.PathLike[str], what: str = "model") -> Path | None:
    """The folder ``name`` names when it is local (FileNotFoundError if it is path-like and missing, or a file);
    None for a hub id."""
    path = Path(os.path.expanduser(str(name)))
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{name} is a file; a {what} is a folder (a trimformer checkpoint or a "
                                  "transformers model folder)")
        return path
    if looks_like_path(name):
        raise FileNotFoundError(f"{what} folder {name} not found; check the path (a local path is never looked up "
                                "on the hub)")
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def from_pretrained(load: Callable[..., Any], name: str | os.PathLike[str], what: str = "model",
                    **kwargs: Any) -> Any:
    """``load(name, **kwargs)`` (a transformers ``from_pretrained``) with trimformer's errors: a missing local path
    fails at once, a hub name is tried in the cache before the network, and any failure becomes a
    :class:`CheckpointError` naming the folder or hub id and what to do."""
    local = require_local(name, what)
    if local is not None:
        try:
            return load(str(local), local_files_only=True, **kwargs)
        except Exception as err:  # transformers raises OSError, ValueError, SafetensorError, KeyError...
            raise CheckpointError(f"{local}: cannot read the {what} ({type(err).__name__}: {err}); the folder is "
                                  "incomplete or corrupt: re-create or re-download it") from err
    try:
        return load(str(name), local_files_only=True, **kwargs)
    except Exception as cached_err:
        if _offline():
            raise CheckpointError(f"{what} {name!r} is neither a local folder nor in the hub cache, and "
                                  "HF_HUB_OFFLINE is set; check the name, or download it first") from cached_err
    try:
        return load(str(name), **kwargs)
    except Exception as err:
        raise CheckpointError(f"{what} {name!r} is neither a local folder nor in the hub cache, and downloading it "
                              f"failed ({type(err).__name__}: {err}); check the name or your connection "
                              "(HF_HUB_OFFLINE=1 stops every network attempt)") from err


def check_finite(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """CheckpointError naming the tensors that hold NaN or infinite values (a model saved after it diverged)."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{where}: the weights hold NaN or infinite values in {len(bad)} tensor(s), e.g. "
                              f"{bad[:3]}: the model was saved after its training diverged; re-train it (a lower "
                              "learning rate) or use an earlier checkpoint")
