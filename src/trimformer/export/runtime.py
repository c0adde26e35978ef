"""ONNX Runtime sessions for exported models, set up for honest CPU timing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _ort():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - the [onnx] extra is part of the dev install
        raise ImportError("ONNX export needs onnx and onnxruntime: pip install 'trimformer[onnx]'") from err
    return onnxruntime


def session(path: str | Path, threads: int | None = None, spinning: bool = False):
    """An ``InferenceSession`` on the CPU. ``spinning`` False sets ``session.intra_op.allow_spinning`` to 0: ORT's
    threads otherwise spin after each run and steal the CPU from whatever runs next (interleaved timings)."""
    ort = _ort()
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX model at {path}: export one with trimformer export CKPT --out {path}")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: Any, inputs: dict[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``sess`` on the inputs it declares (torch tensors or arrays; extra keys such as labels are ignored)."""
    feed = {}
    for spec in sess.get_inputs():
        if spec.name not in inputs:
            raise ValueError(f"the ONNX model needs input {spec.name!r}; got {sorted(inputs)}")
        value = inputs[spec.name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feed[spec.name] = array.astype(np.int64) if "int64" in spec.type else array.astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))
