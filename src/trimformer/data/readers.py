"""Strict readers of users' table files: CSV / TSV (a header row) and JSONL (one JSON object per line).

Every row is checked and the problems of every bad row are collected with their line, so that the caller raises
one :class:`DataFileError` listing them all (the first :data:`MAX_REPORTED`): rows with too few or too many
fields, undecodable bytes, invalid CSV quoting or JSON, JSON values that are not objects. Nothing is guessed:
a short row is not padded with None, an unquoted comma is not a new field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_REPORTED = 20  # bad rows listed in one error; the rest are counted
TABLE_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".json")


class DataFileError(ValueError):
    """A data file with bad rows: names the file and the line of each (the first ``MAX_REPORTED``)."""

    def __init__(self, path: Path | str, problems: Sequence[tuple[int, str]], advice: str = "",
                 numbering: str = "file:line"):
        self.path = Path(path)
        self.problems = sorted(problems)
        shown = "\n".join(f"  {self.path}:{line}: {what}" for line, what in self.problems[:MAX_REPORTED])
        more = len(self.problems) - MAX_REPORTED
        tail = f"\n  ... and {more} more problem(s)" if more > 0 else ""
        count = len({line for line, _ in self.problems})
        advice = f"\n{advice}" if advice else ""
        rows = f"{count} bad row{'s' if count > 1 else ''}"
        super().__init__(f"{self.path}: {rows} ({numbering}):\n{shown}{tail}{advice}")


@dataclass(frozen=True)
class Row:
    """One record of a file: its first line number (1-based, as an editor shows it) and its fields."""

    line: int
    fields: dict[str, Any]


@dataclass
class Table:
    """A file read row by row: its columns (JSONL: every key seen, in order), the well-formed rows, and the
    (line, problem) of every malformed one."""

    path: Path
    columns: list[str]
    rows: list[Row]
    problems: list[tuple[int, str]]

    def require(self, required: Sequence[str]) -> None:
        """A ValueError naming the columns when a required column is in no row at all (a wrong column name)."""
        missing = [c for c in required if c not in self.columns]
        if missing:
            raise ValueError(f"{self.path}: column(s) {missing} not found; its columns are {self.columns}. Name "
                             "the columns with --columns TEXT[,PAIR],LABEL (Python: columns=(...))")
        if not self.rows and not self.problems:
            raise ValueError(f"{self.path} holds no examples")


def _decoded_lines(path: Path, problems: list[tuple[int, str]]) -> Iterator[str]:
    """The file's lines as text (UTF-8, a leading BOM dropped); undecodable lines are added to ``problems``
    and decoded with replacement characters so that the rest of the file is still checked."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append((number, f"bytes {raw[err.start:err.end]!r} at byte {err.start + 1} of the line are "
                                     "not UTF-8; save the file as UTF-8"))
            yield raw.decode("utf-8", errors="replace")


def read_table(path: Path) -> Table:
    """A CSV (``,``) or TSV (tab) file with a header row. Fields keep their exact text (quoted commas and
    newlines included); a row with another number of fields than the header is a problem, not a guess."""
    problems: list[tuple[int, str]] = []
    delimiter, kind, shown = ("\t", "TSV", "tabs") if path.suffix == ".tsv" else (",", "CSV", "commas")
    csv.field_size_limit(1 << 30)
    reader = csv.reader(_decoded_lines(path, problems), delimiter=delimiter, strict=True)
    rows: list[Row] = []
    columns: list[str] | None = None
    start = 1  # the line the next record starts on
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            problems.append((start, f"not valid {kind} ({err}): put fields that contain quotes, {shown} or "
                                    'newlines in double quotes, and double the quotes inside ("")'))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if columns is None:
            columns = [c.strip() for c in fields]
            if not any(columns):
                raise DataFileError(path, [(line, "the first row must name the columns (a header row)")])
            continue
        if not fields:  # a blank line
            continue
        if len(fields) != len(columns):
            what = "too few" if len(fields) < len(columns) else "too many"
            problems.append((line, f"{what} fields: {len(fields)} for the {len(columns)} columns {columns}; put "
                                   f"fields that contain {shown} in double quotes"))
            continue
        rows.append(Row(line, dict(zip(columns, fields, strict=True))))
    if columns is None:
        if problems:
            raise DataFileError(path, problems)
        raise ValueError(f"{path} is empty: it needs a header row and examples")
    return Table(path, columns, rows, problems)


def read_jsonl(path: Path) -> Table:
    """A JSONL file, one object per line; a line that is not valid JSON or not an object is a problem."""
    problems: list[tuple[int, str]] = []
    rows: list[Row] = []
    keys: dict[str, None] = {}  # every key seen, in order
    for number, text in enumerate(_decoded_lines(path, problems), start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            problems.append((number, f"not valid JSON ({err.msg} at column {err.colno})"))
            continue
        if not isinstance(value, dict):
            problems.append((number, f"a JSON {type(value).__name__}, not an object {{\"text\": ..., ...}}"))
            continue
        keys.update(dict.fromkeys(value))
        rows.append(Row(number, value))
    return Table(path, list(keys), rows, problems)


def read_rows(path: Path) -> Table:
    """A .csv / .tsv / .jsonl file read row by row (see :func:`read_table` and :func:`read_jsonl`)."""
    if path.suffix in TABLE_SUFFIXES:
        return read_table(path)
    if path.suffix in JSONL_SUFFIXES:
        return read_jsonl(path)
    raise ValueError(f"{path}: unsupported data format '{path.suffix}'; use .csv, .tsv or .jsonl")
