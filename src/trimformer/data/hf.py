"""Data through the Hugging Face ``datasets`` library (the optional extra ``trimformer[datasets]``).

Sources (:func:`is_hf_source`): a local ``save_to_disk`` folder, a ``.parquet`` file, or a hub name for users with
a network: ``glue/mrpc`` (data set ``glue``, config ``mrpc``), ``owner/name:config``, or ``hf:name`` for a name
without a slash. Splits: 'train' reads ``train``; 'test' reads ``validation`` where there is one (GLUE's ``test``
splits have no labels), else ``test``. A folder or file holding one split serves both.

Text columns: ``columns`` as for files, else the first pair of GLUE-style names present (``text``/``text_pair``,
``sentence1``/``sentence2``, ``question1``/``question2``, ``premise``/``hypothesis``, ``question``/``sentence``),
else a single ``text``/``sentence``/``question`` column; the label column is ``label``. A ``ClassLabel`` column
keeps its names in its own order; other labels are typed as :mod:`trimformer.data.labels` says. Images: an
``image`` / ``img`` column of images and a ``label`` column.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from trimformer.data.batching import sample_indices
from trimformer.data.labels import TypedLabels, type_labels
from trimformer.data.readers import DataFileError
from trimformer.data.textset import TextDataset, resolve_columns

INSTALL = "pip install 'trimformer[datasets]'"
TEXT_COLUMNS = (("text", "text_pair"), ("sentence1", "sentence2"), ("question1", "question2"),
                ("premise", "hypothesis"), ("question", "sentence"), ("text", None), ("sentence", None),
                ("question", None))
IMAGE_COLUMNS = ("image", "img")
_DISK_MARKERS = ("dataset_dict.json", "state.json")
ROWS = "source:row, rows counted from 0"


def is_hf_source(name: str) -> bool:
    """Whether ``name`` is for ``datasets``: a save_to_disk folder, a .parquet file, or a hub name (``a/b``,
    ``owner/name:config``, ``hf:name``) whose first part is not a local path."""
    path = Path(name)
    if path.suffix == ".parquet" or (path.is_dir() and any((path / m).is_file() for m in _DISK_MARKERS)):
        return True
    if name.startswith("hf:"):
        return True
    parts = path.parts
    return "/" in name and len(parts) >= 2 and not name.startswith((".", "/", "~")) and not Path(parts[0]).exists() \
        and path.suffix == ""


def _datasets() -> Any:
    if importlib.util.find_spec("datasets") is None:
        raise ValueError(f"reading Parquet files, save_to_disk folders and hub data sets needs the datasets "
                         f"library: {INSTALL}")
    import datasets

    return datasets


def _hub_name(name: str) -> tuple[str, str | None]:
    """'glue/mrpc' -> ('glue', 'mrpc'); 'owner/name:config' -> ('owner/name', 'config'); 'hf:imdb' -> ('imdb', None)."""
    name = name.removeprefix("hf:")
    if ":" in name:
        path, config = name.split(":", 1)
        return path, config or None
    if "/" in name:
        path, config = name.split("/", 1)
        return path, config
    return name, None


def load_split(name: str, split: str) -> Any:
    """The ``datasets.Dataset`` of ``split`` ('train' or 'test') from a folder, a Parquet file or the hub."""
    datasets = _datasets()
    path = Path(name)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} not found")
        import pyarrow.parquet as pq

        try:
            return datasets.Dataset(pq.read_table(path))
        except Exception as err:  # pyarrow raises its own types for corrupt files
            raise ValueError(f"{path}: cannot read it as Parquet ({err})") from err
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    else:
        hub, config = _hub_name(name)
        try:
            loaded = datasets.load_dataset(hub, config)
        except Exception as err:  # offline: ConnectionError, OSError, DatasetNotFoundError, ... all mean "not here"
            raise ValueError(f"cannot load {hub!r}{f' (config {config!r})' if config else ''} from the Hugging Face "
                             f"Hub: {type(err).__name__}: {err}. Without a network, run datasets' save_to_disk on "
                             "a machine that has one and pass that folder to --data") from err
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    wanted = ("train",) if split == "train" else ("validation", "validation_matched", "test")
    for key in wanted:
        if key in loaded:
            return loaded[key]
    raise ValueError(f"{name} has the splits {list(loaded)}, none of {list(wanted)} for {split}")


def _pick_columns(name: str, columns: list[str], chosen: tuple[str, str | None, str] | None
                  ) -> tuple[str, str | None, str]:
    if chosen is None:
        found = next(((a, b) for a, b in TEXT_COLUMNS if a in columns and (b is None or b in columns)), None)
        if found is None:
            raise ValueError(f"{name}: no text column among {columns}; name them with --columns "
                             "TEXT[,PAIR],LABEL (Python: columns=(...))")
        chosen = (found[0], found[1], "label")
    missing = [c for c in chosen if c and c not in columns]
    if missing:
        raise ValueError(f"{name}: column(s) {missing} not found; its columns are {columns}. Name the columns with "
                         "--columns TEXT[,PAIR],LABEL (Python: columns=(...))")
    return chosen


def _labels(name: str, table: Any, column: str, label_type: str) -> TypedLabels:
    """Labels of a ``datasets`` column: a ClassLabel keeps its names and ids; anything else is typed by value.
    Rows are named by 0-based index (``row 12``)."""
    datasets = _datasets()
    feature = table.features[column]
    values = table[column]
    if isinstance(feature, datasets.ClassLabel):
        unlabelled = [i for i, v in enumerate(values) if v is None or v < 0]
        if unlabelled:
            raise DataFileError(name, [(i, "no label (-1: a hub test split has none; evaluate on the validation "
                                           "split)") for i in unlabelled], numbering=ROWS)
        return TypedLabels(list(feature.names), list(values))
    problems: list[tuple[int, str]] = []
    typed = type_labels(range(len(values)), values, False, problems, label_type)
    if problems:
        raise DataFileError(name, problems, numbering=ROWS)
    return typed


def hf_text_data(name: str, split: str, columns: Any = None, label_type: str = "auto") -> TextDataset:
    """A ``TextDataset`` from a ``datasets`` source (see the module doc); every empty or null text is reported
    by row index."""
    table = load_split(name, split)
    chosen = None if columns is None else resolve_columns(columns, table.column_names)
    text_col, pair_col, label_col = _pick_columns(name, list(table.column_names), chosen)
    problems = []
    texts = {c: table[c] for c in (text_col, pair_col) if c}
    for column, values in texts.items():
        problems += [(i, f"{'null' if v is None else 'empty'} text in {column!r}") for i, v in enumerate(values)
                     if not isinstance(v, str) or not v.strip()]
    if problems:
        raise DataFileError(name, problems, numbering=ROWS)
    typed = _labels(name, table, label_col, label_type)
    return TextDataset(texts[text_col], typed.values, typed.names, Path(name).stem or name,
                       texts[pair_col] if pair_col else None)


class HFImageDataset(Dataset):
    """(pixels [3, R, R], label) items from a ``datasets`` table with an image and a ClassLabel column."""

    def __init__(self, table: Any, image_column: str, resolution: int | None, classes: list[str]):
        self.table, self.image_column, self.resolution, self.classes = table, image_column, resolution, classes

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        from trimformer.data.images import to_model_input

        row = self.table[index]
        image = row[self.image_column]
        try:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3] in [0, 1]
        except (AttributeError, OSError) as err:
            raise ValueError(f"row {index} of the image column {self.image_column!r}: cannot decode ({err})") from err
        pixels = torch.from_numpy(rgb).permute(2, 0, 1)  # [3, H, W]
        return to_model_input(pixels, self.resolution), torch.tensor(row["label"], dtype=torch.int64)


def hf_image_data(name: str, split: str, resolution: int | None, limit: int | None = None,
                  seed: int = 0) -> Dataset:
    """An image dataset from a ``datasets`` source with an ``image``/``img`` column and a ClassLabel ``label``
    (``limit``: a seeded subset)."""
    datasets = _datasets()
    table = load_split(name, split)
    image_column = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
    if image_column is None or "label" not in table.column_names:
        raise ValueError(f"{name}: an image data set needs an image column ({' or '.join(IMAGE_COLUMNS)}) and a "
                         f"'label' column; its columns are {table.column_names}")
    feature = table.features["label"]
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(f"{name}: the 'label' column must be a datasets ClassLabel (class names), got {feature}")
    images = HFImageDataset(table, image_column, resolution, list(feature.names))
    return images if limit is None else Subset(images, sample_indices(len(images), limit, seed))
