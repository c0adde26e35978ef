"""Base class of pruning policies: per layer, a function from attention to a keep mask."""

from __future__ import annotations

from torch import nn

from trimformer.blocks import Decide, Merge


class PruningPolicy(nn.Module):
    """Decides, in every layer, which tokens survive. Subclasses hold any learned parameters.

    Two hooks per layer: :meth:`decider` prunes right after the attention softmax; :meth:`merger` merges
    or fuses tokens between attention and MLP (ToMe, EViT). ``proportional_attention`` adds log(token size)
    to the attention logits once tokens have been merged.
    """

    method: str = "none"
    proportional_attention: bool = False

    def decider(self, layer: int, num_prefix: int) -> Decide | None:
        """The decision function for ``layer`` (None: keep everything)."""
        raise NotImplementedError

    def merger(self, layer: int, num_prefix: int) -> Merge | None:
        """The merge function for ``layer`` (None: no merging, the default)."""
        return None

    def config(self):
        """The method's JSON-serialisable config dataclass."""
        raise NotImplementedError
