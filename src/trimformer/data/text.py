"""Text data: built-in offline corpora and users' CSV/TSV/JSONL files of texts or sentence pairs with class labels
or regression targets."""

from __future__ import annotations

import bz2
import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from trimformer.assets import newsgroups_file, rotten_tomatoes_file
from trimformer.data.batching import fixed_batches
from trimformer.data.hf import hf_text_data, is_hf_source
from trimformer.data.labels import type_labels
from trimformer.data.readers import JSONL_SUFFIXES, TABLE_SUFFIXES, DataFileError, Row, read_rows
from trimformer.data.textset import Columns, TextDataset, resolve_columns

BUILTIN_DATASETS = ("rotten_tomatoes", "20newsgroups")


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


def _check_texts(rows: Sequence[Row], column: str, problems: list[tuple[int, str]]) -> None:
    """Every row's ``column`` must be a string with something in it; each one that is not is a problem."""
    for row in rows:
        value = row.fields.get(column)
        if value is None:
            problems.append((row.line, f"{column!r} is null; give every example a text"))
        elif not isinstance(value, str):
            problems.append((row.line, f"{column!r} is a JSON {type(value).__name__}, not a string"))
        elif not value.strip():
            problems.append((row.line, f"empty text in {column!r}; give every example a text or remove the row"))


def load_text_file(path: str | Path, text_column: str = "text", label_column: str = "label",
                   label_names: Sequence[str] | None = None, *, pair_column: str | None = None,
                   columns: Columns | None = None, label_type: str = "auto") -> TextDataset:
    """Read a CSV / TSV (header row) or JSONL (one object per line) file of texts or sentence pairs and labels.

    ``columns`` names the columns by role (see :func:`resolve_columns`; it overrides ``text_column``,
    ``pair_column`` and ``label_column``); a ``text_pair`` column is used as the second text when present.
    Labels are typed as :mod:`trimformer.data.labels` says: integer classes in numeric order, string classes
    sorted with surrounding whitespace stripped (``"pos "`` is ``"pos"``), float regression targets;
    ``label_type`` 'class' or 'regression' says which where 'auto' cannot. Texts are kept exactly as written.
    ``label_names``: a model's classes, to map the labels onto (by name, or by index when the model has no
    names). Every bad row is reported with its line, all in one :class:`~trimformer.data.readers.DataFileError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    if columns is None and (text_column, pair_column, label_column) != ("text", None, "label"):
        columns = {"text": text_column, "label": label_column, **({"text_pair": pair_column} if pair_column else {})}
    table = read_rows(path)
    text_col, pair_col, label_col = resolve_columns(columns, table.columns)
    wanted = [c for c in (text_col, pair_col, label_col) if c]
    table.require(wanted)
    problems = list(table.problems)
    rows = []
    for row in table.rows:  # JSONL rows may lack keys that other rows have
        missing = [c for c in wanted if c not in row.fields]
        if missing:
            problems.append((row.line, f"no key {', '.join(map(repr, missing))} (its keys: {list(row.fields)})"))
        else:
            rows.append(row)
    for column in wanted[:-1]:
        _check_texts(rows, column, problems)
    typed = type_labels([r.line for r in rows], [r.fields[label_col] for r in rows],
                        path.suffix in TABLE_SUFFIXES, problems, label_type)
    if problems:
        raise DataFileError(path, problems)
    pairs = [r.fields[pair_col] for r in rows] if pair_col else None
    data = TextDataset([r.fields[text_col] for r in rows], typed.values, typed.names, path.stem, pairs)
    return data if label_names is None else data.relabel(list(label_names))


def load_text_data(name: str, split: str, label_names: Sequence[str] | None = None, *,
                   columns: Columns | None = None, label_type: str = "auto") -> TextDataset:
    """Built-in corpus by name ('rotten_tomatoes', '20newsgroups'), a CSV/TSV/JSONL path (see
    :func:`load_text_file`), or through the ``datasets`` library a Parquet file, a save_to_disk folder or a hub
    name (see :mod:`trimformer.data.hf`).

    For a file, ``split`` is ignored: pass the train and test files separately.
    """
    if name == "rotten_tomatoes":
        data = _rotten_tomatoes(split)
    elif name == "20newsgroups":
        data = _newsgroups(split)
    elif Path(name).suffix in TABLE_SUFFIXES + JSONL_SUFFIXES:
        return load_text_file(name, label_names=label_names, columns=columns, label_type=label_type)
    elif is_hf_source(name):
        data = hf_text_data(name, split, columns, label_type)
    elif Path(name).exists() or Path(name).suffix:
        raise ValueError(f"{name}: not a data file or folder trimformer reads; use a .csv/.tsv/.jsonl/.parquet file "
                         "or a datasets save_to_disk folder")
    else:
        raise ValueError(f"unknown dataset {name!r}: use one of {BUILTIN_DATASETS}, a .csv/.tsv/.jsonl/.parquet "
                         "file, a datasets save_to_disk folder, or a hub name such as glue/mrpc (hf:NAME for a name "
                         "without a slash)")
    return data if label_names is None else data.relabel(list(label_names))


def text_collate(tokenizer, max_length: int) -> Callable[[list[tuple]], dict[str, torch.Tensor]]:
    """Tokenise a list of (text, label) or ((text, text_pair), label) items, padded to the longest in the batch
    (right padding); float labels (regression targets) stay float. Pairs also give ``special_tokens_mask``
    (1 at [CLS] and every [SEP]): the tokens a pruned model never drops."""

    def collate(items: list[tuple]) -> dict[str, torch.Tensor]:
        pairs = isinstance(items[0][0], tuple)
        firsts = [t[0] if pairs else t for t, _ in items]
        seconds = [t[1] for t, _ in items] if pairs else None
        enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length, padding="longest",
                        return_tensors="pt", return_special_tokens_mask=pairs)
        keys = ("input_ids", "attention_mask", "token_type_ids") + (("special_tokens_mask",) if pairs else ())
        batch = {k: enc[k] for k in keys if k in enc}
        labels = [y for _, y in items]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
        return batch

    return collate


def transformers_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A collated batch as a transformers model takes it: without ``special_tokens_mask`` (trimformer's
    protection of a pair's [SEP]s, which only :class:`~trimformer.pruned.TokenPrunedModel` reads)."""
    return {k: v for k, v in batch.items() if k != "special_tokens_mask"}


def unlabelled_batches(data: TextDataset, tokenizer, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """``data`` tokenised into fixed batches, in order, without labels (timing, calibration)."""
    return fixed_batches(data, text_collate(tokenizer, max_length), batch_size)
