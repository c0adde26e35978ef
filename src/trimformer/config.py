"""JSON round-tripping for config dataclasses."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, TypeVar

T = TypeVar("T")


class JsonConfig:
    """Mixin for dataclasses: ``to_dict``/``from_dict`` and ``to_json``/``from_json``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))  # type: ignore[attr-defined]


def check_numbers(config: Any, counts: tuple[str, ...] = (), positive_counts: tuple[str, ...] = (),
                  nonnegative: tuple[str, ...] = ()) -> None:
    """Validate a config dataclass's numbers: every float field (and float inside a tuple/list field) finite;
    ``counts`` integers >= 0 and ``positive_counts`` integers >= 1; ``nonnegative`` numbers >= 0 (None allowed).
    ValueError naming the field otherwise."""
    name = type(config).__name__
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ValueError(f"{name}.{f.name} must be finite, got {value!r}")
    for field_name, minimum in [*((n, 0) for n in counts), *((n, 1) for n in positive_counts)]:
        value = getattr(config, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}.{field_name} must be an integer >= {minimum}, got {value!r}")
    for field_name in nonnegative:
        value = getattr(config, field_name)
        if value is not None and value < 0:
            raise ValueError(f"{name}.{field_name} must be >= 0, got {value!r}")
