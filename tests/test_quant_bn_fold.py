"""Batch-norm folding from the fx graph: parity on a tiny CNN with depthwise / grouped convs."""

import copy

import pytest
import torch
from torch import nn

from trimformer.quant import PWLQConfig, find_conv_bn_pairs, fold_batchnorm_, quantize_


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw_bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(16)
        self.grp = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.grp_bn = nn.BatchNorm2d(16)
        self.shared_out = nn.Conv2d(16, 16, 1)  # output also used by the residual: must not be folded
        self.shared_bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)
        self.fc_bn = nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # [B, 8, H, W]
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = self.grp_bn(self.grp(self.pw_bn(self.pw(x))))  # [B, 16, H, W]
        y = self.shared_out(x)
        x = self.shared_bn(y) + y
        return self.fc_bn(self.fc(x.mean(dim=(2, 3))))  # [B, 10]


def _net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_pairs_found_from_graph():
    pairs = find_conv_bn_pairs(_net())
    expected = [("stem.0", "stem.1"), ("dw", "dw_bn"), ("pw", "pw_bn"), ("grp", "grp_bn"), ("fc", "fc_bn")]
    assert pairs == expected


def test_fold_parity_and_quantize_after():
    net = _net()
    ref_net = copy.deepcopy(net)
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_net(x)
        fold_batchnorm_(net)
        out = net(x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert isinstance(net.dw_bn, nn.Identity) and isinstance(net.stem[1], nn.Identity)
    assert isinstance(net.shared_bn, nn.BatchNorm2d)  # not foldable
    assert net.stem[0].bias is not None
    quantize_(net, PWLQConfig(wbits=8, act=None))
    with torch.no_grad():
        assert float((net(x) - ref).norm() / ref.norm()) < 0.05


def test_fold_refuses_training_mode_and_untraceable():
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm_(_net().train())

    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.b(self.c(x)) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="torch.fx"):
        fold_batchnorm_(Dynamic().eval())
