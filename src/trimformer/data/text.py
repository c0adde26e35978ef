"""Text classification data: built-in offline corpora and users' CSV/JSONL files."""

from __future__ import annotations

import bz2
import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trimformer.assets import newsgroups_file, rotten_tomatoes_file
from trimformer.data.batching import fixed_batches

BUILTIN_DATASETS = ("rotten_tomatoes", "20newsgroups")


@dataclass
class TextDataset:
    """Parallel lists of texts and integer labels, with the label names."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    name: str = "custom"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        for i, text in enumerate(self.texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{self.name}: example {i} has an empty text; remove it from the data")
        bad = [y for y in self.labels if not 0 <= y < len(self.label_names)]
        if bad:
            raise ValueError(f"{self.name}: label {bad[0]} outside 0..{len(self.label_names) - 1}")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        """Example ``index`` as a (text, label) pair: the item every data loader and collate here takes."""
        return self.texts[index], self.labels[index]

    def subset(self, n: int | None, seed: int = 0) -> TextDataset:
        """A seeded random subset of ``n`` examples (all of them if ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return TextDataset([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names,
                           self.name)


def _rotten_tomatoes(split: str) -> TextDataset:
    label_names = ["rotten", "fresh"]
    texts, labels = [], []
    with bz2.open(rotten_tomatoes_file(), "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] not in label_names or not row["text"].strip():
                continue  # 'plot' rows are movie summaries, not reviews
            texts.append(row["text"].strip())
            labels.append(label_names.index(row["category"]))
    # Deterministic 90/10 split: every 10th example is test.
    keep = [i for i in range(len(texts)) if (i % 10 == 9) == (split == "test")]
    return TextDataset([texts[i] for i in keep], [labels[i] for i in keep], label_names, "rotten_tomatoes")


def _newsgroups(split: str) -> TextDataset:
    csv.field_size_limit(1 << 30)
    with open(newsgroups_file(split), encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[3:]  # Orange .tab: 3 header rows
    rows = [r for r in rows if len(r) >= 2 and r[1].strip()]
    label_names = sorted({r[0] for r in rows})
    return TextDataset([r[1].strip() for r in rows], [label_names.index(r[0]) for r in rows], label_names,
                       "20newsgroups")


def _from_records(records: list[dict], path: Path, text_key: str, label_key: str,
                  label_names: Sequence[str] | None) -> TextDataset:
    if not records:
        raise ValueError(f"{path} holds no examples")
    missing = [k for k in (text_key, label_key) if k not in records[0]]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} not found; columns are {list(records[0])}. "
                         "Pass --text-column / --label-column")
    raw = [str(r[label_key]) for r in records]
    names = list(label_names) if label_names else sorted(set(raw))
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:5]} are not among the model's labels {names}")
    return TextDataset([str(r[text_key]) for r in records], [names.index(y) for y in raw], names, path.stem)


def load_text_file(path: str | Path, text_key: str = "text", label_key: str = "label",
                   label_names: Sequence[str] | None = None) -> TextDataset:
    """Read a CSV (header row) or JSONL (one object per line) text-classification file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    if path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    elif path.suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise ValueError(f"{path}: unsupported data format '{path.suffix}'; use .csv, .tsv or .jsonl")
    return _from_records(records, path, text_key, label_key, label_names)


def load_text_data(name: str, split: str, label_names: Sequence[str] | None = None) -> TextDataset:
    """Built-in corpus by name ('rotten_tomatoes', '20newsgroups') or a CSV/JSONL path.

    For a file, ``split`` is ignored: pass the train and test files separately.
    """
    if name == "rotten_tomatoes":
        return _rotten_tomatoes(split)
    if name == "20newsgroups":
        return _newsgroups(split)
    if Path(name).suffix in (".csv", ".tsv", ".jsonl", ".json"):
        return load_text_file(name, label_names=label_names)
    raise ValueError(f"unknown dataset {name!r}: use one of {BUILTIN_DATASETS} or a .csv/.jsonl file")


def text_collate(tokenizer, max_length: int) -> Callable[[list[tuple[str, int]]], dict[str, torch.Tensor]]:
    """Tokenise a list of (text, label) pairs, padded to the longest in the batch (right padding)."""

    def collate(items: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        enc = tokenizer([t for t, _ in items], truncation=True, max_length=max_length, padding="longest",
                        return_tensors="pt")
        batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        batch["labels"] = torch.tensor([y for _, y in items])
        return batch

    return collate


def unlabelled_batches(data: TextDataset, tokenizer, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """``data`` tokenised into fixed batches, in order, without labels (timing, calibration)."""
    return fixed_batches(data, text_collate(tokenizer, max_length), batch_size)
