"""The options of ``trimformer structured``: one per field of the structured methods' configs (``AdaPrunerConfig``,
``OFARConfig``), each applying to the methods that read that field and refused with the others.

``magnitude`` and ``slimming`` (the baselines of :mod:`trimformer.structured.baselines`) take their settings from
``AdaPrunerConfig`` fields, so that they are validated alike and a baseline run differs from an AdaPruner run only
in what the baseline does not do (criterion choice, importance-scaled widths).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from trimformer.cli.options import (
    describe,
    flag,
    fraction,
    fraction_or_zero,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from trimformer.structured import AdaPrunerConfig, OFARConfig
from trimformer.structured.importance import CRITERIA
from trimformer.structured.ofar_config import ALLOCATIONS

_ADAPRUNER_FIELDS = tuple(f.name for f in dataclasses.fields(AdaPrunerConfig))
_MAGNITUDE_FIELDS = ("target_flops", "finetune_steps", "lr", "batch_size", "seed", "calibration_batches",
                     "tolerance")
# method -> (the config type built from the options, the fields that method reads)
STRUCTURED_CLI_METHODS = MappingProxyType({
    "adapruner": (AdaPrunerConfig, _ADAPRUNER_FIELDS),
    "magnitude": (AdaPrunerConfig, _MAGNITUDE_FIELDS),
    "slimming": (AdaPrunerConfig, (*_MAGNITUDE_FIELDS, "l1_penalty", "sparse_steps")),
    "ofar": (OFARConfig, tuple(f.name for f in dataclasses.fields(OFARConfig))),
})


@dataclasses.dataclass(frozen=True)
class FieldOption:
    """One option: the config field it sets, its argparse type, whether it takes a list, choices, help."""

    field: str
    type: Callable[[str], Any] | None
    help: str
    many: bool = False
    choices: tuple[str, ...] | None = None


FIELD_OPTIONS = (
    FieldOption("target_flops", fraction, "wanted FLOPs of the pruned model as a fraction of the dense model's, in "
                                          "(0, 1]"),
    FieldOption("rates", fraction, "OFAR: the FLOPs budgets of the family, fractions in (0, 1] of the dense FLOPs at "
                                   "the largest resolution", many=True),
    FieldOption("resolutions", positive_int, "OFAR: the input sizes in pixels the family is trained for (>= 4); the "
                                             "largest is the dense network's", many=True),
    FieldOption("sparse_steps", nonnegative_int, "steps of sparse training (L1 penalty on the batch-norm scales)"),
    FieldOption("l1_penalty", nonnegative_float, "weight of the L1 penalty on the batch-norm scales"),
    FieldOption("criteria", None, "AdaPruner: the weight-inheritance criteria tried (the most accurate is kept)",
                many=True, choices=CRITERIA),
    FieldOption("criterion", None, "OFAR: the channel criterion of the structure search", choices=CRITERIA),
    FieldOption("allocation", None, "OFAR: widths per rate from one global threshold or one ratio for every group",
                choices=ALLOCATIONS),
    FieldOption("selection_images", positive_int, "AdaPruner: training images the criterion is chosen on"),
    FieldOption("finetune_steps", nonnegative_int, "fine-tuning steps of the pruned model"),
    FieldOption("steps", nonnegative_int, "OFAR: training steps in all (search, then joint training)"),
    FieldOption("search_interval", positive_int, "OFAR: steps between two structure checks of the search"),
    FieldOption("max_search_steps", nonnegative_int, "OFAR: the search stops by this step"),
    FieldOption("similarity_threshold", fraction, "OFAR: the masks' cosine similarity that ends the search"),
    FieldOption("subnets_per_step", positive_int, "OFAR: sub-networks trained per step (the smallest one among them)"),
    FieldOption("distill_weight", fraction_or_zero, "OFAR: weight of the distillation from the dense network"),
    FieldOption("calibration_batches", positive_int, "batches the batch-norm statistics are recalibrated on"),
    FieldOption("min_channel_ratio", fraction, "least fraction of a channel group's channels kept"),
    FieldOption("tolerance", positive_float, "relative FLOPs error allowed around the target (below 0.5)"),
    FieldOption("lr", positive_float, "learning rate (AdamW, cosine schedule)"),
    FieldOption("batch_size", positive_int, "images per training step"),
    FieldOption("seed", nonnegative_int, "random seed (training, criteria and the --train-subset sample)"),
)


def _default_shown(field: str) -> str:
    """The field's defaults per method, as --help shows them."""
    shown: dict[str, list[str]] = {}
    for method, (cls, fields) in STRUCTURED_CLI_METHODS.items():
        if field in fields:
            value = {f.name: f for f in dataclasses.fields(cls)}[field].default
            text = " ".join(map(str, value)) if isinstance(value, tuple) else describe(value)
            shown.setdefault(text, []).append(method)
    if len(shown) == 1:
        methods, = shown.values()
        return f"{', '.join(methods)}; default {next(iter(shown))}"
    return "; ".join(f"{', '.join(m)}: default {v}" for v, m in shown.items())


def add_structured_options(p: argparse.ArgumentParser) -> None:
    """Every config field as an option (sentinel default None: only given values reach the config)."""
    g = p.add_argument_group("method settings (each applies to the methods named in its help)")
    for opt in FIELD_OPTIONS:
        assert any(opt.field in fields for _, fields in STRUCTURED_CLI_METHODS.values()), opt.field
        g.add_argument(flag(opt.field), type=opt.type, choices=opt.choices, nargs="+" if opt.many else None,
                       default=None, metavar=None if opt.choices else opt.field.upper(),
                       help=f"{opt.help} ({_default_shown(opt.field)})")


def structured_config(args: argparse.Namespace) -> AdaPrunerConfig | OFARConfig:
    """The config of ``args.method`` from the given options; an option the method does not read is refused."""
    cls, fields = STRUCTURED_CLI_METHODS[args.method]
    given = {o.field: getattr(args, o.field) for o in FIELD_OPTIONS if getattr(args, o.field, None) is not None}
    foreign = [name for name in given if name not in fields]
    if foreign:
        users = {name: [m for m, (_, f) in STRUCTURED_CLI_METHODS.items() if name in f] for name in foreign}
        detail = "; ".join(f"{flag(n)} is for --method {' | '.join(users[n])}" for n in foreign)
        raise ValueError(f"{', '.join(flag(n) for n in foreign)} {'does' if len(foreign) == 1 else 'do'} not apply "
                         f"to --method {args.method} ({detail}); leave {'it' if len(foreign) == 1 else 'them'} out")
    return cls(**given)
