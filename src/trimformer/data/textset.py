"""The text dataset type every text verb takes, and how columns are named by role."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trimformer.data.batching import sample_indices
from trimformer.data.labels import has_names, match_labels


@dataclass
class TextDataset:
    """Parallel lists of texts (and second texts of sentence pairs) and labels, with the label names.

    Classification: ``labels`` are class ids into ``label_names``. Regression (STS-B style): ``label_names`` is
    None and ``labels`` are float targets. ``text_pairs``: the second text of each example, or None.
    """

    texts: list[str]
    labels: list[int] | list[float]
    label_names: list[str] | None
    name: str = "custom"
    text_pairs: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.text_pairs)} second texts (text_pairs)")
        for column in (self.texts, self.text_pairs or []):
            for i, text in enumerate(column):
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{self.name}: example {i} has an empty text; remove it from the data")
        if self.label_names is None:
            bad = [y for y in self.labels if isinstance(y, bool) or not isinstance(y, (int, float))]
            if bad:
                raise ValueError(f"{self.name}: regression targets must be numbers, got {bad[0]!r}")
            self.labels = [float(y) for y in self.labels]
            return
        bad = [y for y in self.labels if isinstance(y, bool) or not isinstance(y, int)
               or not 0 <= y < len(self.label_names)]
        if bad:
            raise ValueError(f"{self.name}: label {bad[0]!r} is not a class id in 0..{len(self.label_names) - 1}")

    @property
    def is_regression(self) -> bool:
        """Float targets (one model output) rather than classes."""
        return self.label_names is None

    @property
    def has_pairs(self) -> bool:
        return self.text_pairs is not None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str | tuple[str, str], int | float]:
        """Example ``index`` as (text, label), or ((text, text_pair), label) for pairs: the item every data loader
        and collate here takes."""
        text = self.texts[index] if self.text_pairs is None else (self.texts[index], self.text_pairs[index])
        return text, self.labels[index]

    def _take(self, idx: Sequence[int], labels: Sequence | None = None,
              label_names: list[str] | None = None) -> TextDataset:
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in idx]
        labels = [self.labels[i] for i in idx] if labels is None else list(labels)
        names = self.label_names if label_names is None else label_names
        return TextDataset([self.texts[i] for i in idx], labels, names, self.name, pairs)

    def subset(self, n: int | None, seed: int = 0) -> TextDataset:
        """A seeded random subset of ``n`` examples (all of them if ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        return self._take(sample_indices(len(self), n, seed))

    def relabel(self, label_names: list[str] | None, model: str = "the model",
                same_count: bool = True) -> TextDataset:
        """This data with its labels as the class ids of a model whose classes are ``label_names`` (None: a
        regression model); see :func:`trimformer.data.labels.match_labels` for the rule and its errors."""
        mapping = match_labels(self.label_names, label_names, self.name, model, same_count)
        if mapping is None or (mapping == list(range(len(mapping))) and self.label_names == label_names):
            return self
        if not has_names(label_names):  # matched by index: the data keeps its own names
            return self
        return self._take(range(len(self)), [mapping[y] for y in self.labels], list(label_names))


Columns = Sequence[str] | Mapping[str, str]


def resolve_columns(columns: Columns | None, available: Sequence[str] = ()) -> tuple[str, str | None, str]:
    """(text, text_pair or None, label) column names: ``columns`` as ('text', 'label'), ('premise',
    'hypothesis', 'label') or {'text': ..., 'text_pair': ..., 'label': ...}; by default 'text', 'label' and a
    'text_pair' column when the data has one."""
    if columns is None:
        return "text", ("text_pair" if "text_pair" in available else None), "label"
    if isinstance(columns, Mapping):
        unknown = sorted(set(columns) - {"text", "text_pair", "label"})
        if unknown:
            raise ValueError(f"columns: unknown role(s) {unknown}; the roles are 'text', 'text_pair' and 'label'")
        return columns.get("text", "text"), columns.get("text_pair"), columns.get("label", "label")
    names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
    if len(names) not in (2, 3) or not all(names):
        raise ValueError(f"columns: give TEXT,LABEL or TEXT,PAIR,LABEL column names, got {columns!r}")
    return (names[0], None, names[1]) if len(names) == 2 else (names[0], names[1], names[2])
