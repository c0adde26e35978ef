"""The generated docs (docs/results.md, docs/cli.md, docs/api.md and the README's headline table) match what the
committed JSON, the CLI's parsers and the docstrings give: regenerate with ``python benchmarks/make_docs.py``."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "benchmarks" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["docs/results.md", "docs/cli.md", "docs/api.md", "docs/export.md", "README.md"])
def test_generated_file_is_up_to_date(name):
    expected = _make_docs().outputs()[ROOT / name]
    assert (ROOT / name).read_text(encoding="utf-8") == expected, \
        f"{name} is out of date: run python benchmarks/make_docs.py"


def test_readme_links_resolve():
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
