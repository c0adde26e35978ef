"""Static top-k keep-rate cascade (SpAtten-style, the baseline of the official LTP code)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trimformer.config import JsonConfig, check_numbers
from trimformer.core.scoring import class_attention, ltp_importance
from trimformer.core.selection import count_from_rate, keep_counts_from_rate, protect_prefix, topk_mask
from trimformer.data.batching import Collate, calibration_batches
from trimformer.engine.hooks import Decision
from trimformer.engine.policy import PruningPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.train.calibration import calibrate_knob
from trimformer.train.finetune import finetune_under_pruning
from trimformer.train.loop import TrainConfig

SCORES = {"ltp": ltp_importance, "cls_attention": class_attention}


@dataclass
class TopKConfig(JsonConfig):
    """Keep rate falls linearly from 1 towards ``final_keep_rate`` over the layers.

    Layer l keeps ceil(rate_l * live tokens) of the tokens still alive, rate_l = 1 - (1 - final) (l+1)/L.
    With ``target_flops`` set, ``final_keep_rate`` is calibrated to reach that FLOPs fraction.
    """

    final_keep_rate: float = 0.5
    target_flops: float | None = 0.5
    score: str = "ltp"  # 'ltp' (mean attention received) or 'cls_attention' (attention from [CLS])
    hard_steps: int = 200
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        check_numbers(self, counts=("hard_steps",), positive_counts=("calibration_batches",))
        if not 0.0 < self.final_keep_rate <= 1.0:
            raise ValueError(f"final_keep_rate must be in (0, 1], got {self.final_keep_rate}")
        if self.target_flops is not None and not 0.0 < self.target_flops <= 1.0:
            raise ValueError(f"target_flops is a fraction of dense FLOPs in (0, 1], got {self.target_flops}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {sorted(SCORES)}, got {self.score!r}")


class TopKPolicy(PruningPolicy):
    """Keeps a fixed fraction of the live tokens per layer, ranked by LTP importance."""

    method = "topk"

    def __init__(self, num_layers: int, config: TopKConfig):
        super().__init__(num_layers)
        self.topk_config = config
        self.register_buffer("final_keep_rate", torch.tensor(float(config.final_keep_rate), dtype=torch.float64))
        self._final: tuple[tuple[int, int], float] | None = None  # (buffer stamp, its value as a float)

    def config(self) -> TopKConfig:
        return self.topk_config

    def final_rate(self) -> float:
        """``final_keep_rate`` as a float, read once per change of the buffer (calibration, loading). A compiled
        forward uses the value last read eagerly (``compile_pruned`` reads it first), so it needs no break."""
        if self._final is not None and torch.compiler.is_compiling():
            return self._final[1]
        stamp = (self.final_keep_rate._version, self.final_keep_rate.data_ptr())
        if self._final is None or self._final[0] != stamp:
            self._final = (stamp, float(self.final_keep_rate))
        return self._final[1]

    def keep_rate(self, layer: int) -> float:
        return 1.0 - (1.0 - self.final_rate()) * (layer + 1) / self.num_layers

    def decision(self, layer: int, num_prefix: int) -> Decision:
        rate = self.keep_rate(layer)
        score_fn = SCORES[self.topk_config.score]

        def decide(probs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
            scores = score_fn(probs, alive)  # [B, N]
            prefix = protect_prefix(torch.zeros_like(alive), num_prefix)
            scores = scores.masked_fill(prefix, float("inf"))  # prefix tokens rank first
            counts = keep_counts_from_rate(alive, rate, minimum=num_prefix)
            return protect_prefix(topk_mask(scores, alive, counts), num_prefix)

        # class attention reads [CLS]'s row only; on a full row of n tokens the count is known from n
        return Decision(decide, query_rows=1 if self.topk_config.score == "cls_attention" else None,
                        fixed_width=lambda n: count_from_rate(n, rate, minimum=num_prefix))


def calibrate_topk(model: TokenPrunedModel, batches: list[dict[str, torch.Tensor]], target: float,
                   ) -> tuple[float, float]:
    """Set the final keep rate of the cascade so that it reaches ``target`` FLOPs -> (keep rate, ratio)."""
    policy: TopKPolicy = model.policy  # type: ignore[assignment]
    return calibrate_knob(model, batches, target, policy.final_keep_rate.fill_, decreasing=False)


def fit_topk(model: TokenPrunedModel, data: Sequence, collate: Collate, config: TrainConfig,
             state_dir: str | Path | None = None) -> dict:
    """The top-k baseline's recipe: (calibrate the keep rate to the FLOPs target) -> hard-mask fine-tuning."""
    topk = model.policy.config()
    history: dict = {}
    if topk.target_flops is not None:
        calib = calibration_batches(data, collate, config.batch_size, topk.calibration_batches, seed=config.seed)
        history["final_keep_rate"], history["calibrated_ratio"] = calibrate_topk(model, calib, topk.target_flops)
        topk.final_keep_rate = history["final_keep_rate"]
    history["hard"] = finetune_under_pruning(model, data, collate, config, topk.hard_steps, "topk-hard", state_dir)
    model.mode = "packed"
    model.eval()
    return history
