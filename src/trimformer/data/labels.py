"""Labels by their type, and the one rule for a model's labels meeting a data set's.

Typing (:func:`type_labels`): integer labels are integer classes ordered numerically (2 before 10), strings are
classes sorted as strings with surrounding whitespace stripped (``"pos "`` is ``"pos"``), JSON booleans are the
classes ``false``/``true``, numbers with a fractional part are regression targets. A float with a whole value
(``1.0``) is never silently a class: it is a target when the column holds fractional values too, and an error
otherwise (write classes as ``1``, or ask for regression). Types are never mixed: ``1``, ``1.0`` and ``true`` in
one JSONL file is an error naming the lines of each type. In CSV/TSV every value is text: a column whose every
value is an integer is integer-typed, one whose every value is a number with some fractional values is a target.

Matching (:func:`match_labels`): when the model's classes have real names, data labels are mapped to them by
name (an unknown label is an error listing both sets); a model whose names are transformers' defaults
(``LABEL_0``...) has none, so the data must have exactly as many classes and they are mapped by index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DEFAULT_NAME = re.compile(r"LABEL_(\d+)")
LABEL_TYPES = ("auto", "class", "regression")


@dataclass(frozen=True)
class TypedLabels:
    """A label column read by type: ``names`` (classes in id order; None for regression targets) and one
    ``value`` per row: the class id, or the float target."""

    names: list[str] | None
    values: list[int] | list[float]

    @property
    def is_regression(self) -> bool:
        return self.names is None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str"}.get(type(value), type(value).__name__)


def _text_kind(value: str) -> str:
    if _INT.fullmatch(value):
        return "int"
    return "float" if _NUMBER.fullmatch(value) else "str"


def _class_name(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def type_labels(lines: Sequence[int], raw: Sequence[Any], from_text: bool, problems: list[tuple[int, str]],
                label_type: str = "auto") -> TypedLabels:
    """Type one label column (``raw[i]`` read at line ``lines[i]``; ``from_text``: CSV/TSV strings).

    ``label_type``: 'auto' (see the module doc), 'class' (whole-valued floats become integer classes) or
    'regression' (every label a finite number). Every bad label is added to ``problems`` as (line, what); the
    result is only meaningful when none was added."""
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    before = len(problems)
    values: list[Any] = []
    kinds: dict[str, list[int]] = {}
    for line, value in zip(lines, raw, strict=True):
        if isinstance(value, str):
            value = value.strip()
            if not value:
                problems.append((line, "empty label"))
                continue
        kind = _text_kind(value) if from_text else _json_kind(value)
        if value is None or kind not in ("bool", "int", "float", "str"):
            problems.append((line, f"label is {'null' if value is None else 'a JSON ' + kind}; give a string or "
                                   "a number"))
            continue
        if from_text and kind != "str":
            value = int(value) if kind == "int" else float(value)
        if kind == "float" and not math.isfinite(value):
            problems.append((line, f"label {value} is not a finite number"))
            continue
        kinds.setdefault(kind, []).append(line)
        values.append(value)
    if len(problems) > before or not values:
        return TypedLabels([], [])
    if from_text and "str" in kinds and len(kinds) > 1:  # CSV: numbers among words are words
        values = [str(r).strip() for r in raw]
        kinds = {"str": list(lines)}
    numeric = set(kinds) <= {"int", "float"}
    if label_type == "regression" or (label_type == "auto" and "float" in kinds and numeric):
        return _targets(values, kinds, label_type, problems)
    if "float" in kinds and numeric:  # label_type 'class': whole floats are integer classes
        fractional = [line for line, v in zip(lines, values, strict=True)
                      if isinstance(v, float) and not v.is_integer()]
        problems.extend((line, "a fractional label cannot be a class") for line in fractional)
        values = [int(v) for v in values]
        kinds = {"int": list(lines)}
    if len(kinds) > 1:
        _mixed(kinds, problems)
    if len(problems) > before:
        return TypedLabels([], [])
    order = sorted(set(values))  # ints numerically, strings as strings, False < True
    index = {v: i for i, v in enumerate(order)}
    return TypedLabels([_class_name(v) for v in order], [index[v] for v in values])


def _targets(values: list[Any], kinds: dict[str, list[int]], label_type: str,
             problems: list[tuple[int, str]]) -> TypedLabels:
    """Regression targets: every label a number; whole values alone are refused unless asked for."""
    for kind, lines in kinds.items():
        if kind not in ("int", "float"):
            problems.extend((line, f"a {kind} label among numeric regression targets") for line in lines)
    if problems:
        return TypedLabels(None, [])
    floats = [float(v) for v in values]
    if label_type == "auto" and all(v.is_integer() for v in floats):
        problems.extend((line, "a whole-valued float label (1.0): write class labels as integers (1), or ask for "
                               "regression targets with --label-type regression (Python: label_type='regression')")
                        for line in kinds["float"])
    return TypedLabels(None, floats)


def _mixed(kinds: dict[str, list[int]], problems: list[tuple[int, str]]) -> None:
    """Labels of several types: the lines of every type but the most common one are reported."""
    common = max(kinds, key=lambda k: len(kinds[k]))
    problems.extend((line, f"a {k} label where the other {len(kinds[common])} labels are {common}s: labels of one "
                           "column share one type (1, 1.0 and true are different values)")
                    for k, lines in kinds.items() if k != common for line in lines)


def has_names(names: Sequence[str]) -> bool:
    """Whether class names are real names, not transformers' defaults LABEL_0, LABEL_1, ..."""
    return not all(_DEFAULT_NAME.fullmatch(n) and int(n[6:]) == i for i, n in enumerate(names))


def match_labels(data_names: Sequence[str] | None, model_names: Sequence[str] | None, data: str,
                 model: str = "the model", same_count: bool = True) -> list[int] | None:
    """The model's class id of each of the data's classes (None: targets, nothing to map), or a ValueError
    listing both label sets. ``model_names`` None means a regression model (one output).

    Unnamed model classes are matched by index: with ``same_count`` (files and folders, whose class ids come
    from sorting the names they hold) the counts must agree; without it (a dataset whose ids the caller chose)
    the data may use fewer classes than the model has, never more."""
    if data_names is None or model_names is None:
        if (data_names is None) != (model_names is None):
            what = "regression targets" if data_names is None else f"{len(data_names)} classes"
            has = "is a regression model (one output)" if model_names is None else \
                f"has {len(model_names)} classes {list(model_names)}"
            raise ValueError(f"{data} holds {what} but {model} {has}: fine-tune a model on data of this kind")
        return None
    if not has_names(model_names):
        if len(data_names) > len(model_names) or (same_count and len(data_names) != len(model_names)):
            raise ValueError(f"{data} has {len(data_names)} classes {list(data_names)[:20]} but {model} has "
                             f"{len(model_names)} unnamed classes ({model_names[0]}...): the counts must agree, "
                             "as unnamed classes are matched by index")
        return list(range(len(data_names)))
    position = {n: i for i, n in enumerate(model_names)}
    unknown = [n for n in data_names if n not in position]
    if unknown:
        which = f"none of its labels {list(unknown)[:20]}" if len(unknown) == len(data_names) else \
            f"label(s) {unknown[:20]} that {model} does not know (the data's labels: {list(data_names)[:50]})"
        raise ValueError(f"{data} has {which}; the model's labels are {list(model_names)}. Evaluate on data with "
                         "the model's labels, or fine-tune a model on this data")
    return [position[n] for n in data_names]


def require_classes(names: Sequence[str] | None, data: str) -> None:
    """Training data must hold two classes or more (one class would train a model that always says it)."""
    if names is not None and len(names) < 2:
        raise ValueError(f"{data} holds one class only ({list(names)}): a classifier needs two classes or more; "
                         "for regression targets give numeric labels")


class Relabelled(Dataset):
    """A dataset of (input, label) items whose labels are mapped through ``mapping`` (data id -> model id)."""

    def __init__(self, data: Dataset, mapping: Sequence[int]):
        self.data, self.mapping = data, list(mapping)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        x, y = self.data[index]
        return x, torch.tensor(self.mapping[int(y)], dtype=torch.int64)


def relabel_items(data: Dataset, mapping: Sequence[int] | None) -> Dataset:
    """``data`` with its labels mapped (unchanged where ``mapping`` is None or the identity)."""
    if mapping is None or list(mapping) == list(range(len(mapping))):
        return data
    return Relabelled(data, mapping)


def image_classes(data: Dataset) -> list[str] | None:
    """The class names of an image dataset (also through a ``Subset``), or None when it has none."""
    while not hasattr(data, "classes") and hasattr(data, "dataset"):
        data = data.dataset
    classes = getattr(data, "classes", None)
    return list(classes) if classes is not None else None


def model_label_names(config: Any, recorded: Sequence[str] | None = None) -> list[str] | None:
    """A classifier's classes in output order from its transformers ``config`` (``recorded``: names a checkpoint
    saved, preferred); None for a regression model (one output, or ``problem_type`` 'regression')."""
    if config.num_labels == 1 or getattr(config, "problem_type", None) == "regression":
        return None
    return list(recorded or [config.id2label[i] for i in range(config.num_labels)])


def align_to_model(data: Any, model_names: list[str] | None, model: str = "the model") -> Any:
    """``data`` with its labels as the model's class ids (the API's rule: ``same_count=False``, see
    :func:`match_labels`): a ``TextDataset`` (:meth:`relabel`), or a dataset with ``classes`` (image folders,
    Fashion-MNIST); anything else (ready batches, plain tensors) is returned as is."""
    if hasattr(data, "relabel"):
        return data.relabel(model_names, model, same_count=False)
    classes = image_classes(data) if isinstance(data, Dataset) else None
    if classes is None:
        return data
    return relabel_items(data, match_labels(classes, model_names, f"the data ({len(classes)} classes)", model,
                                            same_count=False))


def present_classes(data: Any) -> list[str] | None:
    """The classes that examples of ``data`` carry: a ``TextDataset``'s labels in use, an image dataset's class
    folders; None for targets or data without names."""
    if hasattr(data, "relabel"):
        return None if data.label_names is None else sorted({data.label_names[y] for y in data.labels})
    return image_classes(data) if isinstance(data, Dataset) else None
