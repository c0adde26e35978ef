"""Small ResNet-18-style and MobileNetV2-style CNNs for 1x28x28 images (Fashion-MNIST): the benchmark models of
reconstruction PTQ (and of structured pruning), trained by ``benchmarks/train_cnn_zoo.py``.

Both keep the structure of their namesakes at a fraction of the width, so that each trains in minutes on a
CPU: ResNet-18's four stages of two basic blocks (3x3 conv-BN-ReLU, 3x3 conv-BN, identity or 1x1 conv-BN
shortcut, ReLU), and MobileNetV2's inverted residuals (1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 linear
project-BN, residual when stride 1 and widths match). Every block is an element of an ``nn.Sequential``, so
:func:`trimformer.quant.find_units` sees each as one reconstruction unit. Inputs are normalised as for
:class:`trimformer.vision.cnn.MobileNetCNN` (:func:`trimformer.vision.cnn.prepare_images`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from trimformer.vision.cnn import CNNConfig, MobileNetCNN


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """[conv (no bias), BatchNorm] with "same" padding."""
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, shortcut (1x1 conv-BN when the shape changes), ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *conv_bn(cout, cout, 3))
        self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout
                         else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, cin, H, W) -> (B, cout, H/stride, W/stride)
        return self.relu(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (x ``expand``) - 3x3 depthwise (stride) - 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, cin, H, W) -> (B, cout, H/stride, W/stride)
        return x + self.conv(x) if self.residual else self.conv(x)


class _Classifier(nn.Module):
    """stem -> blocks -> (head) -> global average pool -> Linear."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, features: int,
                 num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, 28, 28) normalised -> (B, num_classes) logits
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))


class ResNetCNN(_Classifier):
    """ResNet-18 layout (4 stages x 2 basic blocks, strides 1/2/2/2) at ``widths``."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), blocks_per_stage: int = 2,
                 in_channels: int = 1, num_classes: int = 10) -> None:
        stem = nn.Sequential(*conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        super().__init__(stem, blocks, nn.Identity(), cin, num_classes)


# MobileNetV2's (expand t, channels c, repeats n, first stride s), narrowed for 28 px inputs
MOBILENETV2_SETTINGS = ((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 1), (4, 32, 2, 2), (4, 48, 1, 1))


class MobileNetV2CNN(_Classifier):
    """MobileNetV2 layout (inverted residuals, ReLU6, linear bottlenecks, a final 1x1 conv to ``last``)."""

    def __init__(self, settings: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_SETTINGS, stem: int = 16,
                 last: int = 128, in_channels: int = 1, num_classes: int = 10) -> None:
        stem_mod = nn.Sequential(*conv_bn(in_channels, stem, 3), nn.ReLU6(inplace=True))
        blocks, cin = [], stem
        for t, c, n, s in settings:
            for j in range(n):
                blocks.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        head = nn.Sequential(*conv_bn(cin, last, 1), nn.ReLU6(inplace=True))
        super().__init__(stem_mod, blocks, head, last, num_classes)


CNN_ZOO = MappingProxyType({"resnet": ResNetCNN, "mobilenetv2": MobileNetV2CNN})


def build_cnn(name: str, **kwargs: Any) -> nn.Module:
    """A zoo model by name ("resnet", "mobilenetv2"), with its constructor arguments. The name and arguments are
    kept on the model as ``trimformer_architecture`` (JSON), so that a structurally pruned copy can be rebuilt
    (:mod:`trimformer.structured.store`)."""
    if name not in CNN_ZOO:
        raise ValueError(f"unknown CNN {name!r}; expected one of {', '.join(CNN_ZOO)}")
    model = CNN_ZOO[name](**kwargs)
    model.trimformer_architecture = {"name": name, "kwargs": _json_args(kwargs)}
    return model


MOBILENET_CNN = "mobilenet_cnn"  # the architecture name of trimformer.vision.cnn.MobileNetCNN in pruning records


def cnn_architecture(model: nn.Module) -> dict[str, Any] | None:
    """The JSON that rebuilds ``model``'s dense architecture: ``build_cnn``'s record, or a ``MobileNetCNN``'s config
    (name :data:`MOBILENET_CNN`); None for any other model."""
    arch = getattr(model, "trimformer_architecture", None)
    if arch is None and isinstance(model, MobileNetCNN):
        return {"name": MOBILENET_CNN, "kwargs": {"config": model.config.to_dict()}}
    return arch


def rebuild_cnn(arch: dict[str, Any]) -> nn.Module:
    """The freshly initialised dense model that :func:`cnn_architecture` described (TypeError / ValueError when the
    record does not build one)."""
    kwargs = dict(arch.get("kwargs") or {})
    if arch["name"] == MOBILENET_CNN:
        return MobileNetCNN(CNNConfig.from_dict(kwargs["config"]))
    return build_cnn(arch["name"], **{k: _tuples(v) for k, v in kwargs.items()})


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples constructors take (nested)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _json_args(value: Any) -> Any:
    """Constructor arguments as JSON values (tuples as lists)."""
    if isinstance(value, dict):
        return {k: _json_args(v) for k, v in value.items()}
    return [_json_args(v) for v in value] if isinstance(value, (tuple, list)) else value
