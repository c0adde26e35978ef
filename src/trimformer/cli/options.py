"""Option types and checks of the command line: every value is validated where it is parsed (argparse ``type=``
functions, whose ``ArgumentTypeError`` argparse turns into ``trimformer <cmd>: error: argument --x: ...`` exit 2),
and an option that does not apply to the chosen task or method is refused rather than ignored.

Options whose use depends on the task or method are declared with :func:`add` and parsed with the sentinel
default ``None``, so that an explicitly given value is known even when it equals the default; :func:`settle`
refuses the inapplicable ones and then fills in the real defaults (shown in ``--help``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULTS_KEY = "option_defaults"


class LazyParser(argparse.ArgumentParser):
    """A sub-command parser that adds some of its options only when it is used (parsed or its help shown), so that
    the other commands do not pay for importing what those options are generated from."""

    def populate_with(self, fill: Callable[[argparse.ArgumentParser], None]) -> None:
        self._fill: Callable[[argparse.ArgumentParser], None] | None = fill

    def _populate(self) -> None:
        fill = getattr(self, "_fill", None)
        if fill is not None:
            self._fill = None
            fill(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._populate()
        return super().format_help()


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _checked(text: str, kind: type, ok, expected: str) -> float | int:
    """``text`` parsed as ``kind``; an ArgumentTypeError saying ``expected`` unless ``ok(value)``."""
    value = kind(_number(text, kind))
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count: an integer >= 1."""
    return _checked(text, int, lambda v: v >= 1, "a count >= 1")


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (0: none, e.g. a skipped stage)."""
    return _checked(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _checked(text, float, lambda v: v > 0, "a number > 0")


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _checked(text, float, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    """A finite fraction in (0, 1]."""
    return _checked(text, float, lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]")


def open_fraction(text: str) -> float:
    """A finite fraction in (0, 1): a budget that must remove something."""
    return _checked(text, float, lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)")


def fraction_or_zero(text: str) -> float:
    """A finite fraction in [0, 1] (0 has a meaning of its own, given in the option's help)."""
    return _checked(text, float, lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]")


def count_or_all(text: str) -> int | str:
    """An integer >= 0, or 'all'."""
    return "all" if text == "all" else nonnegative_int(text)


def json_path(text: str) -> str:
    """A JSON file to write: not a folder, in a folder that exists."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path such as {path / 'results.json'}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist ({path.parent}); create it first")
    return text


def flag(name: str) -> str:
    """The option string of a namespace attribute: 'max_length' -> '--max-length'."""
    return "--" + name.rstrip("_").replace("_", "-")


def describe(value: Any) -> str:
    """A default as ``--help`` shows it."""
    return "on" if value is True else "off" if value is False else "auto" if value is None else str(value)


def add(parser: argparse.ArgumentParser | Any, defaults: dict[str, Any], *flags: str, default: Any, help: str,
        shown: str | None = None, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` with the sentinel default None; the real ``default`` (a value, or one per task)
    goes into ``defaults`` (filled in by :func:`settle`) and into the help text (or ``shown`` there)."""
    if shown is None:
        shown = ", ".join(f"{k} {describe(v)}" for k, v in default.items()) if isinstance(default, Mapping) \
            else describe(default)
    action = parser.add_argument(*flags, default=None, help=f"{help} (default {shown})", **kwargs)
    defaults[action.dest] = default
    return action


def given(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """Which of ``names`` (namespace attributes declared with :func:`add`) the user gave."""
    return [n for n in names if getattr(args, n, None) is not None]


def refuse(args: argparse.Namespace, names: Iterable[str], reason: str) -> None:
    """ValueError when any of ``names`` was given: they do not apply (``reason`` says to what)."""
    bad = given(args, names)
    if bad:
        flags = ", ".join(flag(n) for n in bad)
        raise ValueError(f"{flags} {'does' if len(bad) == 1 else 'do'} not apply {reason}; leave "
                         f"{'it' if len(bad) == 1 else 'them'} out")


Rule = tuple[str, bool, str]  # (option name, whether it applies, what it does not apply to)


def settle(args: argparse.Namespace, task: str, rules: Iterable[Rule] = ()) -> None:
    """Refuse given options that do not apply (``rules``), then fill in the defaults of the rest (a default given
    per task, ``{"text": ..., "vision": ...}``, takes ``task``'s)."""
    for name, applies, reason in rules:
        if not applies:
            refuse(args, [name], reason)
    for name, value in getattr(args, DEFAULTS_KEY, {}).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value[task] if isinstance(value, Mapping) else value)
