"""Base class of pruning policies: per block, a typed hook (a decision or a merge), handed over once per forward."""

from __future__ import annotations

from torch import nn

from trimformer.engine.hooks import NO_HOOKS, Decision, ForwardHooks, LayerHooks, MergeHook


class PruningPolicy(nn.Module):
    """Decides, in every block, which tokens survive. Subclasses hold any learned parameters.

    Two hooks per block: :meth:`decision` prunes right after the attention softmax; :meth:`merge` merges or
    fuses tokens between attention and MLP (ToMe, EViT). ``proportional_attention`` adds log(token size) to the
    attention logits once tokens have been merged. The engine asks for :meth:`hooks` once per forward.
    """

    method: str = "none"
    proportional_attention: bool = False

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int (the model's depth), got {num_layers!r}")
        self.num_layers = num_layers

    def decision(self, layer: int, num_prefix: int) -> Decision | None:
        """The pruning decision of block ``layer`` (None: keep everything)."""
        return None

    def merge(self, layer: int, num_prefix: int) -> MergeHook | None:
        """The merge of block ``layer`` (None: no merging, the default)."""
        return None

    @property
    def records_whole_batch(self) -> bool:
        """Whether this forward's hooks record whole batches (the engine then never splits the batch)."""
        return False

    def hooks(self, num_prefix: int) -> ForwardHooks:
        """Every block's hooks for one forward; ``num_prefix`` leading tokens ([CLS]...) are never pruned."""
        layers = []
        for layer in range(self.num_layers):
            decide, merge = self.decision(layer, num_prefix), self.merge(layer, num_prefix)
            layers.append(NO_HOOKS if decide is None and merge is None else LayerHooks(decide, merge))
        return ForwardHooks(tuple(layers), self.proportional_attention, self.records_whole_batch)

    def config(self):
        """The method's JSON-serialisable config dataclass."""
        raise NotImplementedError
