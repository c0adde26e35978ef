"""The short human summary every command ends with: a small aligned table on stderr (stdout keeps the JSON)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """Rows of cells as left-aligned columns, under an optional header line and rule."""
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells)))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(title: str, rows: Sequence[Sequence[object]], header: Sequence[str] | None = None,
                footer: str | None = None) -> None:
    """Print ``title``, the table and an optional footer line to stderr."""
    text = "\n".join([f"== {title}", format_table(rows, header), *([footer] if footer else [])])
    print(text, file=sys.stderr, flush=True)
