"""The pruning methods' command-line options, generated from the method registry and the config dataclasses.

Each option sets one config field. It applies to the methods whose config has that field, is grouped in ``--help``
under them, and shows their config defaults; given with any other method it is an error. ``trimformer methods``
lists the registry with every config field and its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from trimformer.cli.options import (
    describe,
    fraction,
    fraction_or_zero,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from trimformer.methods import MethodSpec, registered_methods
from trimformer.methods.sait import SAIT_POLICIES


@dataclasses.dataclass(frozen=True)
class MethodOption:
    """One CLI option: its flag, the config field it sets, its argparse type (or choices) and its help."""

    flag: str
    field: str
    type: Callable[[str], Any] | None
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


METHOD_OPTIONS = (
    MethodOption("--target-flops", "target_flops", fraction_or_zero,
                 "wanted fraction of dense FLOPs in (0, 1]; thresholds or the keep rate are calibrated to it. "
                 "0 (ltp, topk): no FLOPs target (LTP: the --lambda regulariser with --final-threshold)"),
    MethodOption("--final-threshold", "final_threshold", nonnegative_float,
                 "LTP base threshold of the last layer"),
    MethodOption("--lambda", "lambda_", nonnegative_float, "LTP mask regulariser weight, used with --target-flops 0"),
    MethodOption("--soft-steps", "soft_steps", nonnegative_int, "LTP soft-stage steps"),
    MethodOption("--temperature", "temperature", positive_float, "soft-mask temperature"),
    MethodOption("--threshold-lr", "threshold_lr", positive_float, "threshold learning rate"),
    MethodOption("--hard-steps", "hard_steps", nonnegative_int, "hard-mask fine-tuning steps"),
    MethodOption("--sait-policy", "policy", None,
                 "SaiT: fixed keep rate (topk) or input-adaptive importance mass (mass)", SAIT_POLICIES),
    MethodOption("--default-level", "default_level", fraction,
                 "SaiT: sparsity level saved with the model (keep rate or importance mass in (0, 1]); "
                 "eval/bench --level runs it at another"),
    MethodOption("--steps", "steps", positive_int, "training steps"),
    MethodOption("--keep-rate", "keep_rate", fraction, "EViT: fraction of tokens kept per pruning layer"),
    MethodOption("--r", "r", nonnegative_int, "ToMe: tokens merged per layer"),
)


def config_fields(config_type: type) -> dict[str, Any]:
    """Field name -> default of a config dataclass (None where it has none)."""
    out = {}
    for f in dataclasses.fields(config_type):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


def methods_of(option: MethodOption) -> list[MethodSpec]:
    """The registered methods whose config has the option's field."""
    return [s for s in registered_methods() if option.field in config_fields(s.config_type)]


def _default_text(option: MethodOption) -> str:
    defaults = {s.name: describe(config_fields(s.config_type)[option.field]) for s in methods_of(option)}
    if len(set(defaults.values())) == 1:
        return next(iter(defaults.values()))
    return ", ".join(f"{name} {value}" for name, value in defaults.items())


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--method`` and one argument group per set of methods sharing options, each option with its defaults."""
    names = [s.name for s in registered_methods()]
    parser.add_argument("--method", choices=names, default=None,
                        help="pruning method (default: ltp for text, sait for vision); `trimformer methods` lists "
                             "them: " + "; ".join(f"{s.name} ({'/'.join(s.tasks)})" for s in registered_methods()))
    groups: dict[tuple[str, ...], Any] = {}
    for option in METHOD_OPTIONS:
        key = tuple(s.name for s in methods_of(option))
        if not key:
            raise AssertionError(f"{option.flag}: no registered method has a {option.field!r} field")
        if key not in groups:
            groups[key] = parser.add_argument_group(f"options of {' / '.join(key)}")
        groups[key].add_argument(option.flag, dest=option.dest, type=option.type, choices=option.choices,
                                 default=None, help=f"{option.help} (default {_default_text(option)})")


def method_config(args: argparse.Namespace, spec: MethodSpec) -> Any:
    """The config of ``spec`` from the given method options (the config's own defaults for the rest); an option
    of another method is an error."""
    fields = config_fields(spec.config_type)
    kwargs: dict[str, Any] = {}
    for option in METHOD_OPTIONS:
        value = getattr(args, option.dest, None)
        if value is None:
            continue
        if option.field not in fields:
            users = ", ".join(s.name for s in methods_of(option))
            raise ValueError(f"{option.flag} does not apply to --method {spec.name} (it is an option of {users}); "
                             "leave it out")
        kwargs[option.field] = value
    if kwargs.get("target_flops") == 0:
        if spec.name not in ("ltp", "topk"):
            raise ValueError(f"--target-flops 0 (no FLOPs target) applies to ltp and topk only; --method "
                             f"{spec.name} needs a fraction in (0, 1]")
        kwargs["target_flops"] = None
    if "lambda_" in kwargs and kwargs.get("target_flops", fields["target_flops"]) is not None:
        raise ValueError("--lambda is used only with --target-flops 0 (a FLOPs target calibrates the thresholds "
                         "instead); pass --target-flops 0 or leave --lambda out")
    return spec.config_type(**kwargs)


def summary_line(spec: MethodSpec) -> str:
    """The first clause of the method module's docstring."""
    doc = (sys.modules[spec.config_type.__module__].__doc__ or spec.config_type.__doc__ or "").strip()
    first = " ".join(doc.split("\n\n")[0].split())
    return first.split(";")[0].rstrip(".")


def methods_listing() -> str:
    """``trimformer methods``: every registered method, its tasks, whether it trains, its one-line summary and
    its config fields with their defaults and CLI flags."""
    flags = {o.field: o.flag for o in METHOD_OPTIONS}
    lines = []
    for spec in registered_methods():
        lines += [f"{spec.name}  [{', '.join(spec.tasks)}; {'trained' if spec.fit else 'training free'}; "
                  f"{spec.config_type.__name__}]", f"  {summary_line(spec)}"]
        for name, default in config_fields(spec.config_type).items():
            cli = f"  ({flags[name]})" if name in flags else ""
            lines.append(f"    {name} = {default!r}{cli}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
