"""The pruning engine: block views, the typed policy hooks, execution options and the block step.

Layers inside: ``view``/``hooks``/``options`` (plain data) -> ``linears``/``onednn`` (kernels and weight caches)
-> ``attention`` (attention variants) -> ``compaction`` -> ``block`` (the block step) -> ``runner`` (the loop).
"""

from trimformer.engine.block import BlockResult, TokenState, run_block
from trimformer.engine.hooks import (
    NO_HOOKS,
    AttentionState,
    Decision,
    ForwardHooks,
    LayerHooks,
    MergeHook,
    StraightThroughKeep,
)
from trimformer.engine.linears import WeightCache
from trimformer.engine.options import EXECUTION_MODES, LINEAR_KERNELS, ExecutionOptions
from trimformer.engine.settings import StepSettings
from trimformer.engine.view import BlockView

__all__ = ["EXECUTION_MODES", "LINEAR_KERNELS", "NO_HOOKS", "AttentionState", "BlockResult", "BlockView",
           "Decision", "ExecutionOptions", "ForwardHooks", "LayerHooks", "MergeHook", "StepSettings",
           "StraightThroughKeep", "TokenState", "WeightCache", "run_block"]
