"""One table from a method's config type to its policy: how ``trimformer.prune(model, config)`` finds the method,
and how a checkpoint's method name is read back. A new method is one module plus one :func:`register_method` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trimformer.engine.policy import PruningPolicy

TASKS = ("text", "vision")


@dataclass(frozen=True)
class MethodSpec:
    """A registered token-reduction method.

    name: the name saved in checkpoints and used by the CLI. config_type: its JSON-round-tripping config dataclass.
    policy_type: built as ``policy_type(num_layers, config)``. tasks: the model families it is made for.
    fit: its training recipe, ``fit(model, data, collate, train_config, state_dir) -> history``
    (``trimformer.fit`` calls it); None for the training-free methods (ToMe, EViT).
    """

    name: str
    config_type: type
    policy_type: type[PruningPolicy]
    tasks: tuple[str, ...]
    fit: Callable[..., dict] | None = None

    def build_policy(self, config: Any, num_layers: int) -> PruningPolicy:
        """The inference policy of ``config`` for a model of ``num_layers`` blocks."""
        return self.policy_type(num_layers, config)

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        return self.config_type.from_dict(data)


_BY_CONFIG: dict[type, MethodSpec] = {}
_BY_NAME: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the table (at import of its module); a name or config type is registered once."""
    if spec.name in _BY_NAME or spec.config_type in _BY_CONFIG:
        raise ValueError(f"method {spec.name!r} / {spec.config_type.__name__} is already registered")
    bad = set(spec.tasks) - set(TASKS)
    if bad:
        raise ValueError(f"unknown task(s) {sorted(bad)} for method {spec.name!r}; tasks are {TASKS}")
    _BY_CONFIG[spec.config_type] = spec
    _BY_NAME[spec.name] = spec
    return spec


def registered_methods() -> list[MethodSpec]:
    """Every registered method, in registration order."""
    return list(_BY_NAME.values())


def method_of(config: Any) -> MethodSpec:
    """The method whose config ``config`` is; TypeError naming the known configs otherwise."""
    spec = _BY_CONFIG.get(type(config))
    if spec is None:
        known = ", ".join(s.config_type.__name__ for s in registered_methods())
        raise TypeError(f"{type(config).__name__} is not a pruning method config; use one of: {known}")
    return spec


def method_named(name: str) -> MethodSpec:
    """The method saved as ``name``; ValueError naming the known methods otherwise."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown pruning method {name!r}; known: {', '.join(_BY_NAME)}")
    return spec
