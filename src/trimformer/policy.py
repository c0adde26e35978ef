"""Base class of pruning policies: per layer, a function from attention to a keep mask."""

from __future__ import annotations

from torch import nn

from trimformer.blocks import Decide


class PruningPolicy(nn.Module):
    """Decides, in every layer, which tokens survive. Subclasses hold any learned parameters."""

    method: str = "none"

    def decider(self, layer: int, num_prefix: int) -> Decide | None:
        """The decision function for ``layer`` (None: keep everything)."""
        raise NotImplementedError

    def config(self):
        """The method's JSON-serialisable config dataclass."""
        raise NotImplementedError
