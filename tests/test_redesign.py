"""What the one-house redesign guarantees: one verb for every method and model, views that follow module swaps,
no import cycles, and no module-level mutable state beyond the registries listed here."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch
from conftest import random_batch

import trimformer
from trimformer.methods import registered_methods
from trimformer.testing import tiny_bert, tiny_vision_model

PACKAGE = Path(trimformer.__file__).parent
SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8, num_labels=3)


def _bert():
    return tiny_bert()


def _vit():
    return tiny_vision_model("vit", **SMALL)


def _dinov2():
    return tiny_vision_model("dinov2", **SMALL)


def _inputs(task: str) -> dict:
    if task == "text":
        ids, mask = random_batch(batch=3, length=16)
        return {"input_ids": ids, "attention_mask": mask}
    return {"pixel_values": torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))}


def _cases():
    for spec in registered_methods():
        for build in ([_bert] if "text" in spec.tasks else []) + ([_vit, _dinov2] if "vision" in spec.tasks else []):
            yield pytest.param(spec, build, id=f"{spec.name}-{build.__name__[1:]}")


@pytest.mark.parametrize("spec,build", list(_cases()))
def test_prune_and_save_load_round_trip_for_every_method_and_model(spec, build, tmp_path):
    model = build()
    task = "text" if build is _bert else "vision"
    pruned = trimformer.prune(model, spec.config_type())
    assert pruned.policy.num_layers == 4 if task == "vision" else 3  # the depth comes from the adapter
    inputs = _inputs(task)
    with torch.no_grad():
        out = pruned(**inputs)
        with pruned.options(pruning=False):
            dense = pruned(**inputs).logits
    torch.testing.assert_close(dense, model(**inputs).logits, atol=1e-5, rtol=1e-5)  # pruning off = the model
    trimformer.save_pruned(pruned, tmp_path / "m")
    again, meta = trimformer.load_pruned(tmp_path / "m")
    assert meta["method"] == spec.name and type(again.policy.config()) is spec.config_type
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, out.logits)


def test_a_method_for_another_task_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="made for vision.*ltp"):
        trimformer.prune(_bert(), trimformer.SaiTConfig())


def test_quantize_on_the_wrapper_or_the_bare_model_runs_the_quantized_layers(tmp_path):
    inputs = _inputs("text")
    for target in ("wrapper", "bare"):
        pruned = trimformer.prune(_bert(), trimformer.LTPConfig(final_threshold=0.05))
        trimformer.quantize_(pruned if target == "wrapper" else pruned.model, trimformer.PWLQConfig(wbits=4, act=None))
        with torch.no_grad(), pruned.options(pruning=False):
            if target == "bare":
                pruned.rebuild_views()  # a module swap the wrapper was not told of: rebuild (or call eval())
            engine = pruned(**inputs).logits
        torch.testing.assert_close(engine, pruned.model(**inputs).logits, atol=1e-5, rtol=1e-5)
        trimformer.save_pruned(pruned, tmp_path / target)
        again, meta = trimformer.load_pruned(tmp_path / target)
        assert meta["quant_config"]["wbits"] == 4
        trimformer.save_pruned(again, tmp_path / f"{target}-again")  # a loaded quantized model saves as quantized
        assert trimformer.load_pruned(tmp_path / f"{target}-again")[1]["quant_config"]["wbits"] == 4


def test_execution_options_are_validated_and_restored():
    pruned = trimformer.prune(_bert(), trimformer.LTPConfig())
    with pytest.raises(ValueError, match="unknown execution option"):
        pruned.set_options(speed="max")
    with pytest.raises(ValueError, match="execution mode"):
        pruned.set_options(mode="fast")
    with pytest.raises(ValueError, match="compact_min_padding"):
        pruned.set_options(compact_min_padding=-1)
    before = pruned.execution
    with pruned.options(mode="masked", regroup=False):
        assert pruned.mode == "masked" and not pruned.execution.regroup
    assert pruned.execution == before


def _module_names() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="trimformer."))


def _imports_of(name: str) -> set[str]:
    """The trimformer modules ``name`` imports at module level or inside functions."""
    path = PACKAGE.joinpath(*name.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trimformer"):
            # ``from package import submodule`` imports the submodule, not the package's other names
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(_module_names())
            found.update(submodules or {node.module})
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: inside a package
            base = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            found.add(f"{base}.{node.module}" if node.module else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("trimformer"))
    return found


def test_the_package_has_no_import_cycle():
    modules = set(_module_names()) | {"trimformer"}
    graph = {m: {i for i in _imports_of(m) if i in modules and i != m} for m in modules - {"trimformer"}}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# The only module-level mutable objects in the package, and why each is there (none is a switch).
ALLOWED_MUTABLE = {
    "trimformer.adapters.base._REGISTRY": "the adapter table, filled when the adapter modules are imported",
    "trimformer.methods.registry._BY_CONFIG": "the method table by config type, filled at import",
    "trimformer.methods.registry._BY_NAME": "the method table by saved name, filled at import",
    "trimformer.quant.handlers.HANDLERS": "the quantization scheme table, filled at import",
    "trimformer.quant.HANDLERS": "the same table, re-exported",
    # constant lookup tables: written once at import, only read afterwards
    "trimformer.adapters.timm_vit._ATTN_CHILDREN": "timm attention children the adapter knows (allow-list)",
    "trimformer.adapters.timm_vit._BLOCK_CHILDREN": "timm block children the adapter knows (allow-list)",
    "trimformer.adapters.timm_vit._MLP_CHILDREN": "timm MLP children the adapter knows (allow-list)",
    "trimformer.methods.asvit._DEFAULT_TEMPERATURE": "defaults per threshold unit",
    "trimformer.methods.asvit._DEFAULT_THRESHOLD_LR": "defaults per threshold unit",
    "trimformer.methods.topk.SCORES": "score name -> scoring function",
    "trimformer.report.plots._COLORS": "plot colours per method",
    "trimformer.report.plots._SPEED_LABELS": "plot labels",
    "trimformer.quant.api.QUANT_MODULES": "float module type -> quantized module type",
    "trimformer.quant.modules.QUANT_MODULES": "the same table, where it is defined",
    "trimformer.quant.config._LEGACY_ACT": "old quantization field names -> new ones (loading old checkpoints)",
    "trimformer.quant.packing.DTYPE_IDS": "dtype codes of the packed format",
    "trimformer.data.images.FASHION_MNIST_FILES": "file names of the Debian data package",
    "trimformer.data.images._IDX_DTYPES": "idx format dtype codes",
}


def test_no_module_level_mutable_state_beyond_the_registries():
    found = []
    for name in _module_names():
        if name.endswith(("dinov2_onnx", "__main__")):  # onnx is optional; __main__ runs the CLI when imported
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, (list, dict, set, bytearray)) and not attr.startswith("__") \
                    and getattr(value, "__module__", None) is None:
                found.append(f"{name}.{attr}")
    unexpected = sorted(set(found) - set(ALLOWED_MUTABLE))
    assert not unexpected, f"module-level mutable state: {unexpected} (make it immutable or justify it here)"
