"""A small MobileNet-style CNN for 1x28x28 images (Fashion-MNIST), the conv model of the PTQ benchmark.

Layout (default config, ~136k parameters, ~12M multiply-adds per image)::

    stem   conv3x3(1 -> 32) + BN + ReLU                       28x28
    block  dw3x3 + BN + ReLU, pw1x1(32 -> 64) + BN + ReLU     28x28
    block  dw3x3/2 ..., pw1x1(64 -> 128) ...                  14x14
    block  dw3x3 ..., pw1x1(128 -> 128) ...                   14x14
    block  dw3x3/2 ..., pw1x1(128 -> 256) ...                 7x7
    block  dw3x3 ..., pw1x1(256 -> 256) ...                   7x7
    global average pool -> dropout -> Linear(256 -> 10)

Every conv has ``bias=False`` and is followed by its own BatchNorm (so ``fold_batchnorm_`` folds all of
them), every module is called once, and the forward has no data-dependent control flow: the model is
``torch.fx`` traceable. The model takes normalised input: ``(x / 255 - mean) / std`` with the
``input_mean`` / ``input_std`` of its config (see :func:`prepare_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trimformer.config import JsonConfig
from trimformer.core.pixels import to_unit_range

# Fashion-MNIST training-set pixel statistics (of x / 255).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


def _default_blocks() -> tuple[tuple[int, int], ...]:
    return ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))


@dataclass
class CNNConfig(JsonConfig):
    """Architecture of :class:`MobileNetCNN`; ``blocks`` lists (output channels, stride) per block."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stem_channels: int = 32
    blocks: tuple[tuple[int, int], ...] = field(default_factory=_default_blocks)
    dropout: float = 0.1
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    input_mean: float = FMNIST_MEAN
    input_std: float = FMNIST_STD

    def __post_init__(self) -> None:
        # JSON turns tuples into lists: normalise so that a round trip compares equal.
        self.blocks = tuple((int(c), int(s)) for c, s in self.blocks)
        if min(self.in_channels, self.image_size, self.num_classes, self.stem_channels) < 1:
            raise ValueError("in_channels, image_size, num_classes and stem_channels must be >= 1")
        if not self.blocks:
            raise ValueError("blocks must list at least one (channels, stride) pair")
        for channels, stride in self.blocks:
            if channels < 1 or stride not in (1, 2):
                raise ValueError(f"each block needs channels >= 1 and stride 1 or 2, got {(channels, stride)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_std <= 0:
            raise ValueError(f"input_std must be > 0, got {self.input_std}")


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU; ``groups=in_channels`` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, cfg: CNNConfig) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=cfg.bn_eps, momentum=cfg.bn_momentum),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (stride s) + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: CNNConfig) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(cin, cin, 3, stride, groups=cin, cfg=cfg)
        self.pointwise = ConvBNReLU(cin, cout, 1, 1, groups=1, cfg=cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, cin, H, W) -> (B, cin, H/s, W/s) -> (B, cout, H/s, W/s)
        return self.pointwise(self.depthwise(x))


class MobileNetCNN(nn.Module):
    """Stem conv, depthwise-separable blocks, global average pool, linear classifier."""

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CNNConfig()
        cfg = self.config
        self.stem = ConvBNReLU(cfg.in_channels, cfg.stem_channels, 3, 1, groups=1, cfg=cfg)
        blocks, cin = [], cfg.stem_channels
        for cout, stride in cfg.blocks:
            blocks.append(DepthwiseSeparable(cin, cout, stride, cfg))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cin, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, 28, 28), normalised
        x = self.stem(x)  # (B, 32, 28, 28)
        x = self.blocks(x)  # (B, 256, 7, 7) with the default blocks
        x = self.pool(x).flatten(1)  # (B, 256)
        return self.classifier(self.dropout(x))  # (B, num_classes) logits


def prepare_images(images: torch.Tensor, config: CNNConfig) -> torch.Tensor:
    """Images (N, H, W) or (N, C, H, W) -> normalised float32 (N, C, H, W) for :class:`MobileNetCNN`; pixels uint8
    (0..255), uint16 (0..65535) or floats in [0, 1] (:func:`~trimformer.core.pixels.to_unit_range`)."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != config.in_channels:
        raise ValueError(f"expected images (N, H, W) or (N, {config.in_channels}, H, W), got {tuple(images.shape)}")
    x = to_unit_range(images, "images")
    return (x - config.input_mean) / config.input_std


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
