"""Move training inputs and trained checkpoints between this machine and a size-limited GPU machine.

The GPU machine used for the long training runs takes at most ~64 MiB of files per call and returns at most
16 MiB per file, so:

- ``pool``: write a seeded pool of the Fashion-MNIST training split (plus the test split, or its first
  ``--test-size`` images) as idx ``.gz`` files, readable by ``trimformer.data.images`` through
  ``$TRIMFORMER_FASHION_MNIST``. The pool is
  ``sorted(torch.randperm(60000, generator=seed)[:size])`` of the Debian package's training images.
- ``pack SRC DST``: a checkpoint folder -> safetensors shards of at most ``--max-mb`` MB plus its JSON files
  and a manifest. Floating tensors are rounded to float16 by default (a transport choice: the weights the
  benchmarks then evaluate are the rounded ones) or travel exactly with ``--dtype keep``; integer tensors
  travel unchanged.
- ``unpack SRC DST``: the shards -> the checkpoint folder again, each tensor in its original dtype. The
  ``files`` digests of ``trimformer.json`` (and of an old ``image_classifier.json``) are recomputed for the
  rebuilt weights and a ``transport`` record says what happened.

    python benchmarks/gpu/transfer.py pool OUT_DIR [--size 30000] [--seed 0]
    python benchmarks/gpu/transfer.py pack runs/x OUT_DIR [--max-mb 15] [--dtype float16|keep]
    python benchmarks/gpu/transfer.py unpack OUT_DIR runs/x
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trimformer.data.images import FASHION_MNIST_FILES, load_fashion_mnist
from trimformer.io_utils import atomic_write_json, file_sha256

MANIFEST = "transfer_manifest.json"


def write_idx_gz(path: Path, array: torch.Tensor) -> None:
    """uint8 tensor -> idx file (magic 0x0000080N, big-endian dims), gzip-compressed."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header + array.contiguous().numpy().tobytes())


def make_pool(out: Path, size: int, seed: int, test_size: int | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    images, labels = load_fashion_mnist("train")
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    img_name, lab_name = FASHION_MNIST_FILES["train"]
    write_idx_gz(out / img_name, images[keep])
    write_idx_gz(out / lab_name, labels[keep])
    test_images, test_labels = load_fashion_mnist("test")
    test_images, test_labels = test_images[:test_size], test_labels[:test_size]  # None: the whole split
    write_idx_gz(out / FASHION_MNIST_FILES["test"][0], test_images)
    write_idx_gz(out / FASHION_MNIST_FILES["test"][1], test_labels)
    record = {"train_pool_rule": f"sorted(torch.randperm(60000, generator=torch.Generator().manual_seed({seed}))"
                                 f"[:{size}])", "train_images": size, "test_images": len(test_images),
              "test_rule": "the whole test split" if test_size is None else f"the first {test_size} test images"}
    atomic_write_json(out / "pool.json", record)
    return record


def pack(src: Path, dst: Path, max_mb: float, dtype: str = "float16") -> None:
    if dtype not in ("float16", "keep"):
        raise ValueError(f"dtype must be 'float16' or 'keep', got {dtype!r}")
    dst.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"files": {}, "transport_dtype": dtype}
    limit = int(max_mb * 1e6)
    shard, shard_bytes, shard_index = {}, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, shard_index
        if shard:
            save_file(shard, str(dst / f"shard{shard_index:02d}.safetensors"))
            shard, shard_bytes, shard_index = {}, 0, shard_index + 1

    for file in sorted(src.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(file))
        manifest["files"][file.name] = {"metadata": metadata,
                                        "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()}}
        for name, tensor in tensors.items():
            small = tensor.to(torch.float16) if tensor.is_floating_point() and dtype == "float16" else tensor
            rows = max(1, small.shape[0] if small.ndim else 1)
            per_row = max(1, small.nbytes // rows)
            chunk = max(1, limit // per_row)  # a tensor larger than a shard is split along dim 0
            parts = [small] if small.nbytes <= limit or small.ndim == 0 else list(small.split(chunk))
            for i, part in enumerate(parts):
                if shard_bytes + part.nbytes > limit:
                    flush()
                key = f"{file.name}::{name}" if len(parts) == 1 else f"{file.name}::{name}::part{i:03d}"
                shard[key] = part.contiguous()
                shard_bytes += part.nbytes
    flush()
    for other in src.iterdir():
        if other.suffix != ".safetensors" and other.is_file():
            shutil.copy2(other, dst / other.name)
    manifest["shards"] = shard_index
    atomic_write_json(dst / MANIFEST, manifest)


def unpack(src: Path, dst: Path) -> None:
    manifest = json.loads((src / MANIFEST).read_text())
    tensors: dict[str, dict[str, torch.Tensor]] = {name: {} for name in manifest["files"]}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for i in range(manifest["shards"]):
        for key, value in load_file(str(src / f"shard{i:02d}.safetensors")).items():
            file, name, *part = key.split("::")
            if part:
                parts.setdefault((file, name), {})[part[0]] = value
            else:
                tensors[file][name] = value
    for (file, name), pieces in parts.items():
        tensors[file][name] = torch.cat([pieces[k] for k in sorted(pieces)])
    tmp = dst.with_name(f".{dst.name}.unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for other in src.iterdir():
        if other.is_file() and other.suffix != ".safetensors" and other.name != MANIFEST:
            shutil.copy2(other, tmp / other.name)
    for file, info in manifest["files"].items():
        dtypes = info["dtypes"]
        missing = set(dtypes) - set(tensors[file])
        if missing:
            raise ValueError(f"{src}: shards lack {len(missing)} tensors of {file}, e.g. {sorted(missing)[:3]}")
        state = {k: v.to(getattr(torch, dtypes[k])) for k, v in tensors[file].items()}
        save_file(state, str(tmp / file), metadata=info["metadata"])
    record_file = tmp / "image_classifier.json"
    rounded = manifest.get("transport_dtype", "float16") == "float16"
    transport = ({"weights_rounded_to": "float16"} if rounded else {"weights": "exact"}) | {
        "tool": "benchmarks/gpu/transfer.py"}
    if record_file.exists():
        record = json.loads(record_file.read_text())
        record["files"] = {name: file_sha256(tmp / name) for name in manifest["files"]}
        record["transport"] = transport
        record_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    pruned_file = tmp / "trimformer.json"
    if pruned_file.exists():
        record = json.loads(pruned_file.read_text())
        record.setdefault("recipe", {})["transport"] = transport
        if "files" in record:  # format 2 records the weights' digests: those of the rebuilt files
            record["files"] = {name: file_sha256(tmp / name) for name in manifest["files"]}
        pruned_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pool", help="seeded Fashion-MNIST training pool + test split as idx .gz")
    p.add_argument("out")
    p.add_argument("--size", type=int, default=30000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-size", type=int, default=None,
                   help="the first N test images only (a smaller upload; accuracy is measured at home anyway)")
    p = sub.add_parser("pack", help="checkpoint folder -> safetensors shards (float16 by default)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--max-mb", type=float, default=15.0)
    p.add_argument("--dtype", choices=("float16", "keep"), default="float16",
                   help="float16: round floating tensors (half the size); keep: exact")
    p = sub.add_parser("unpack", help="shards -> checkpoint folder")
    p.add_argument("src")
    p.add_argument("dst")
    args = ap.parse_args()
    if args.command == "pool":
        print(make_pool(Path(args.out), args.size, args.seed, args.test_size))
    elif args.command == "pack":
        pack(Path(args.src), Path(args.dst), args.max_mb, args.dtype)
    else:
        unpack(Path(args.src), Path(args.dst))


if __name__ == "__main__":
    main()
