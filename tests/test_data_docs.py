"""docs/data.md runs as written: its Python snippets execute in order (tiny models, local files), and its command
lines parse with the real CLI parser (they name the real model, so they are not run here)."""

import os
import re
import shlex
from pathlib import Path

import pytest

from trimformer.cli.main import build_parser

DOC = Path(__file__).resolve().parent.parent / "docs" / "data.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_python_snippets_run(tmp_path):
    pytest.importorskip("datasets")  # the last snippet writes a Parquet file through it
    snippets = _blocks("python")
    assert len(snippets) >= 5
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the snippets write their example files
    try:
        for code in snippets:
            exec(compile(code, str(DOC), "exec"), {})
    finally:
        os.chdir(cwd)


def test_command_lines_parse():
    lines = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("trimformer ")]
    assert lines
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])  # SystemExit on an unknown option
