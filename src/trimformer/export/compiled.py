"""``torch.compile`` of a pruned model: the traceable execution, whose pruning decisions stay in the graph.

Under ``ExecutionOptions(traceable=True)`` a pruned forward has no Python branch on tensor values; the packed width
(how many tokens survive a decision) is a data-dependent size, which Dynamo keeps in one graph when it may capture
scalar outputs and data-dependent output shapes (``in_graph=True``): then every method traces to one graph with no
break. Inductor cannot lower every matmul whose row count is such a size yet (it asks whether it is 1), so
``in_graph=False`` (the default for inductor) lets Dynamo break the graph after each decision instead: the pieces
between decisions compile with dynamic shapes and recompile only for new shape classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trimformer.pruned import TokenPrunedModel


def compile_pruned(model: TokenPrunedModel, backend: str = "inductor", in_graph: bool | None = None,
                   **compile_kwargs: Any) -> Callable[..., Any]:
    """``torch.compile(model)`` in traceable execution; returns a callable with the model's forward signature.

    in_graph: keep the data-dependent widths inside one graph (``fullgraph=True``); default True for backends other
    than inductor. The model's options are switched to ``traceable=True`` (outputs unchanged).
    """
    if not isinstance(model, TokenPrunedModel):
        raise TypeError(f"compile_pruned takes a TokenPrunedModel, got {type(model).__name__}")
    in_graph = backend != "inductor" if in_graph is None else in_graph
    model.set_options(traceable=True)
    if model.policy is not None:  # hooks read once eagerly: values a policy caches as floats need no graph break
        model.policy.hooks(model.adapter.num_prefix_tokens(model.model))
    compiled = torch.compile(model, backend=backend, fullgraph=in_graph, dynamic=True, **compile_kwargs)
    flags = {"capture_scalar_outputs": in_graph, "capture_dynamic_output_shape_ops": in_graph}

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(**flags):  # read when Dynamo traces (first call, recompiles)
            return compiled(*args, **kwargs)

    return run
