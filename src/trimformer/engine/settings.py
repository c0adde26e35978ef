"""What one forward's blocks run with: the model's :class:`ExecutionOptions` resolved for this forward."""

from __future__ import annotations

from dataclasses import dataclass

from trimformer.engine.linears import Linears, WeightCache
from trimformer.engine.options import ExecutionOptions


@dataclass(frozen=True)
class StepSettings:
    """Resolved once per forward and passed to every block step.

    linears: the linear kernel over the model's weight cache. packed: remove dropped tokens (else mask them).
    fused_attention: blocks that need no probabilities run fused attention. chunk_bytes: row-chunk budget of a
    deciding block's probabilities (0: whole batch). compact_min_padding: run the per-token half on live slots
    where padding fills at least this share (None: never). traceable: decide nothing in Python from tensor values
    (see :class:`ExecutionOptions`).
    """

    linears: Linears
    packed: bool = True
    fused_attention: bool = True
    chunk_bytes: int = 0
    compact_min_padding: float | None = None
    traceable: bool = False

    @classmethod
    def plain(cls, packed: bool = True) -> StepSettings:
        """Settings for running blocks directly (tests, tools): no CPU-only measures, ``F.linear``."""
        return cls(Linears("torch", WeightCache()), packed=packed)

    @classmethod
    def resolve(cls, options: ExecutionOptions, cache: WeightCache, *, splittable: bool,
                on_cpu: bool) -> StepSettings:
        """``splittable``: inference where nothing records whole batches (row chunks allowed). The CPU-only
        measures (row chunks, compaction) are cache and padding savings; on a GPU one kernel per step is best."""
        packed = options.mode == "packed"
        cpu_inference = splittable and on_cpu and not options.traceable
        return cls(
            linears=Linears(options.linear_kernel, cache, traceable=options.traceable),
            packed=packed,
            fused_attention=options.fused_attention,
            chunk_bytes=options.attention_chunk_bytes if cpu_inference else 0,
            compact_min_padding=options.compact_min_padding if cpu_inference and packed else None,
            traceable=options.traceable,
        )
