"""The adapter interface and registry."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from trimformer.engine.view import BlockView


class UnsupportedModelError(ValueError):
    """The model (or one of its configuration options) is not handled by trimformer."""


class Adapter(ABC):
    """Describes one model family to the pruning engine."""

    name: str = "base"
    task: str = "text"  # "text" or "vision": the data the model family takes

    def num_prefix_tokens(self, model: nn.Module) -> int:
        """Leading tokens that are never pruned ([CLS], DeiT's distillation token)."""
        return 1

    @abstractmethod
    def supports(self, model: nn.Module) -> bool:
        """True if this adapter is meant for the model's class."""

    @abstractmethod
    def validate(self, model: nn.Module) -> None:
        """Raise UnsupportedModelError for any configuration the adapter would compute wrongly."""

    @abstractmethod
    def blocks(self, model: nn.Module) -> list[BlockView]:
        """The model's transformer blocks, in order."""

    def num_blocks(self, model: nn.Module) -> int:
        """The model's depth (what a policy is built for)."""
        return len(self.blocks(model))

    @abstractmethod
    def check_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]) -> None:
        """Raise ValueError, saying what to do, for inputs ``model`` would mis-compute."""

    @abstractmethod
    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, N, D] and the real-token mask bool [B, N]."""

    @abstractmethod
    def head(self, model: nn.Module, hidden: torch.Tensor, alive: torch.Tensor) -> dict[str, torch.Tensor]:
        """Task outputs from the final hidden states [B, M, D] (prefix tokens first) and live mask [B, M]."""


_REGISTRY: list[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    _REGISTRY.append(adapter)
    return adapter


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter that supports ``model``, validated; a clear error otherwise."""
    for adapter in _REGISTRY:
        if adapter.supports(model):
            adapter.validate(model)
            return adapter
    raise UnsupportedModelError(
        f"trimformer has no adapter for {type(model).__name__}; supported: BERT/RoBERTa "
        "(BertModel, RobertaModel and their *ForSequenceClassification heads), ViT/DeiT/Dinov2 "
        "(*Model and *ForImageClassification) and timm's VisionTransformer"
    )


def check_pixel_values(inputs: dict[str, torch.Tensor | None]) -> None:
    """The input checks every image adapter shares: pixel_values present, [B, C, H, W], finite."""
    pixels = inputs.get("pixel_values")
    if pixels is None:
        raise ValueError("vision models need pixel_values [batch, channels, height, width]")
    if pixels.dim() != 4:
        raise ValueError(f"pixel_values must be [batch, channels, height, width], got {tuple(pixels.shape)}")
    if not torch.isfinite(pixels).all():
        raise ValueError("pixel_values contain NaN or infinite values: check the image loading / normalisation")
