"""The recipe of structured head and MLP-channel pruning, a JSON round-tripping dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from trimformer.config import JsonConfig, check_numbers

CRITERIA = ("norm", "taylor")


@dataclass
class HeadPruningConfig(JsonConfig):
    """Remove attention heads and MLP channels of a BERT-family or ViT-family encoder until its FLOPs meet a budget.

    target_flops: wanted encoder FLOPs as a fraction of the model's, in (0, 1), at the calibration data's mean real
        length (attention's n^2 terms make the share of heads depend on the length).
    criterion: ``'norm'``, the mean L2 norm of each unit's contribution to the block output before the residual sum
        and any LayerNorm (head: its context through its slice of the output projection; MLP channel: |activation|
        x the norm of its output-projection column); or ``'taylor'``, |d loss / d gate| of a gate on each unit
        (first-order Taylor estimate of the loss change when the unit is removed; needs labels).
    calibration_batches: how many batches of the data given to :func:`~trimformer.heads.prune_heads_` are scored.
    prune_heads / prune_mlp: which kinds of unit may be removed (at least one).
    mlp_multiple: each layer keeps a multiple of this many MLP channels (rounded up; 8 or 16 suit CPU kernels).
    """

    target_flops: float = 0.7
    criterion: str = "norm"
    calibration_batches: int = 8
    prune_heads: bool = True
    prune_mlp: bool = True
    mlp_multiple: int = 1

    def __post_init__(self) -> None:
        check_numbers(self, positive_counts=("calibration_batches", "mlp_multiple"))
        if isinstance(self.target_flops, bool) or not isinstance(self.target_flops, (int, float)) \
                or not 0.0 < self.target_flops < 1.0:
            raise ValueError(f"HeadPruningConfig.target_flops is a fraction of the model's FLOPs in (0, 1), got "
                             f"{self.target_flops!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"HeadPruningConfig.criterion must be one of {', '.join(CRITERIA)}, got "
                             f"{self.criterion!r}")
        if not (self.prune_heads or self.prune_mlp):
            raise ValueError("HeadPruningConfig: prune_heads and prune_mlp are both False: nothing could be pruned")
