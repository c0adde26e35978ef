"""Real compressed storage: b-bit codes bit-packed into uint8 plus per-channel parameters, as a flat dict of
tensors that safetensors can save. Unpacking rebuilds weights bit-identical to the fake-quant ones.

Bit order: code i occupies stream bits [i*b, (i+1)*b), least significant bit first; stream bit s is bit
(s % 8) of byte s // 8. The stream is zero-padded to whole bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ._checks import check_bits
from .handlers import handler_for_format_id, handler_for_scheme
from .weights import QuantizedWeight

FORMAT = "trimformer.quant.packed/1"
QSEP = ".qpack."  # "<layer>.weight.qpack.<field>"
DTYPE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
_CHUNK = 1 << 20  # codes per chunk (a multiple of 8, so chunks end on byte boundaries)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer codes < 2^bits into a uint8 stream of ceil(n * bits / 8) bytes."""
    check_bits(bits)
    c = codes.reshape(-1).to(torch.int64).cpu()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing")
    shifts = torch.arange(bits, dtype=torch.int64)
    byte_shifts = torch.arange(8, dtype=torch.int64)
    out = []
    for start in range(0, c.numel(), _CHUNK):
        stream = ((c[start : start + _CHUNK, None] >> shifts) & 1).reshape(-1)
        pad = (-stream.numel()) % 8
        if pad:
            stream = torch.cat([stream, stream.new_zeros(pad)])
        out.append((stream.reshape(-1, 8) << byte_shifts).sum(dim=1).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes as int32."""
    check_bits(bits)
    if packed.dtype != torch.uint8 or packed.numel() * 8 < count * bits:
        raise ValueError(f"packed stream too short or not uint8 for {count} codes of {bits} bits")
    p = packed.reshape(-1).to(torch.int64).cpu()
    shifts = torch.arange(bits, dtype=torch.int64)
    byte_shifts = torch.arange(8, dtype=torch.int64)
    out = []
    step = _CHUNK * bits // 8  # bytes per chunk of codes
    for i, start in enumerate(range(0, p.numel(), step)):
        n = min(_CHUNK, count - i * _CHUNK)
        if n <= 0:
            break
        stream = ((p[start : start + step, None] >> byte_shifts) & 1).reshape(-1)[: n * bits]
        out.append((stream.reshape(n, bits) << shifts).sum(dim=1).to(torch.int32))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int32)


_COMMON_FIELDS = ("codes", "meta", "shape", "gain", "shift")  # every other field is the scheme's (its handler's)


def pack_weight(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """Flat dict of CPU tensors: packed codes, ``meta``/``shape`` ints and per-channel parameters.

    ``meta`` is [scheme id, code bits, region bits, dtype id, rows, cols]; the scheme's parameters are written
    by its handler. ``gain``/``shift`` are omitted when bias correction is the identity (rebuilt as 1 / 0).
    """
    handler = handler_for_scheme(qw.scheme)
    rows, cols = qw.codes.shape
    meta = [handler.format_id, qw.bits, qw.region_bits, DTYPE_IDS[qw.dtype], rows, cols]
    d = {
        "codes": pack_bits(qw.codes, qw.bits),
        "meta": torch.tensor(meta, dtype=torch.int64),
        "shape": torch.tensor(list(qw.shape), dtype=torch.int64),
    }
    if not (bool((qw.gain == 1).all()) and bool((qw.shift == 0).all())):
        d["gain"], d["shift"] = qw.gain, qw.shift
    params = handler.pack_params(qw.params)
    if clash := set(params) & set(_COMMON_FIELDS):
        raise ValueError(f"{qw.scheme} handler stores parameters named like common fields: {sorted(clash)}")
    d.update(params)
    return {k: v.detach().cpu().contiguous() for k, v in d.items()}


def unpack_weight(d: dict[str, torch.Tensor]) -> QuantizedWeight:
    """Rebuild a :class:`QuantizedWeight` from :func:`pack_weight` output."""
    scheme_id, bits, region_bits, dtype_id, rows, cols = (int(x) for x in d["meta"])
    scheme, handler = handler_for_format_id(scheme_id)
    dtype = {v: k for k, v in DTYPE_IDS.items()}[dtype_id]
    codes = unpack_bits(d["codes"], bits, rows * cols).reshape(rows, cols)
    params = handler.unpack_params({k: v for k, v in d.items() if k not in _COMMON_FIELDS}, rows)
    gain = d.get("gain", torch.ones(rows))
    shift = d.get("shift", torch.zeros(rows))
    return QuantizedWeight(
        scheme=scheme,
        bits=bits,
        shape=tuple(int(s) for s in d["shape"]),
        dtype=dtype,
        codes=codes,
        gain=gain,
        shift=shift,
        params=params,
        region_bits=region_bits,
    )


def packed_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Total payload bytes of a dict of tensors (what safetensors stores, without its small header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def pack_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole state dict with every quantized weight replaced by its packed fields ``<w>.qpack.<field>``."""
    out: dict[str, torch.Tensor] = {}
    qkeys = set()
    for name, mod in model.named_modules():
        qw = getattr(mod, "qweight", None)
        if isinstance(qw, QuantizedWeight):
            key = f"{name}.weight" if name else "weight"
            qkeys.add(key)
            for field, t in pack_weight(qw).items():
                out[f"{key}{QSEP}{field}"] = t
    for key, t in model.state_dict().items():
        if key not in qkeys:
            out[key] = t.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    return out


def split_packed(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """({weight key: packed fields}, every other tensor) from :func:`pack_model` output."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if QSEP in key:
            wkey, field = key.split(QSEP, 1)
            groups.setdefault(wkey, {})[field] = t
        else:
            rest[key] = t
    return groups, rest


def unpack_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_model`: a state dict with dequantized weights."""
    groups, sd = split_packed(tensors)
    for wkey, fields in groups.items():
        sd[wkey] = unpack_weight(fields).dequantize()
    return sd


def save_packed(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Save ``pack_model(model)`` with safetensors (recipe in the metadata); returns payload bytes."""
    tensors = pack_model(model)
    meta = {"format": FORMAT}
    cfg: Any = getattr(model, "trimformer_quant_config", None)
    if cfg is not None:
        meta["quant_config"] = json.dumps(cfg, sort_keys=True)
    _check_replaceable(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return packed_nbytes(tensors)


def _check_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse to replace anything at ``path`` but a file :func:`save_packed` wrote."""
    if not os.path.lexists(path):
        return
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            ours = (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a safetensors file at all (safetensors raises several types)
        ours = False
    if not ours or os.path.islink(path):
        raise ValueError(f"{path} exists and was not written by save_packed: it is never replaced; choose another "
                         "path or move it away yourself")


def load_packed(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict with dequantized weights, safetensors metadata) from a file written by save_packed."""
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format={meta.get('format')!r})")
    return unpack_state_dict(load_file(os.fspath(path))), meta
