"""OFA's image stem: the first three stages of a bottleneck ResNet (1024 channels, stride 16).

The blocks are timm's (OFA's are an adaptation of them): parameter names `conv1`, `bn1`,
`layer1.0.downsample.1`, ... as in OFA, so official checkpoints load as they are. The stages are put
together here rather than by timm's ResNet, because OFA stops after the third stage and spreads its
stochastic depth over the blocks of those three only (timm's schedule would count a fourth).
"""
import functools

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models.resnet import Bottleneck, downsample_conv

from .layers import drop_path_rates

# OFA's "resnet18" is not torchvision's: it also uses bottleneck blocks.
RESNET_BLOCKS = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed affine parameters and statistics (OFA's --freeze-resnet)."""

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()  # device, dtype: timm's blocks pass them to every norm layer
        self.eps = eps
        for name, init in (("weight", torch.ones), ("bias", torch.zeros),
                           ("running_mean", torch.zeros), ("running_var", torch.ones)):
            self.register_buffer(name, init(num_features, device=device, dtype=dtype))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def make_norm(kind: str):
    if kind == "frozen":
        return FrozenBatchNorm2d
    if kind == "sync":  # OFA's --sync-bn uses eps 1e-3
        return functools.partial(nn.SyncBatchNorm, eps=1e-3)
    return nn.BatchNorm2d


class ResNet(nn.Module):
    """Stem + layer1..layer3 of a bottleneck ResNet; returns [B, 1024, H/16, W/16]."""

    out_channels, stride = 1024, 16  # an image of P px gives ceil(P / 16) x ceil(P / 16) features

    def __init__(self, layers=(3, 4, 6), norm: str = "batch", drop_path_rate: float = 0.0):
        super().__init__()
        norm_layer = make_norm(norm)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        rates = drop_path_rates(drop_path_rate, sum(layers))
        stages = []
        for i, (planes, blocks, stride) in enumerate(zip((64, 128, 256), layers, (1, 2, 2))):
            first = sum(layers[:i])
            stages.append(self._make_layer(planes, blocks, stride, norm_layer, rates[first:first + blocks]))
        self.layer1, self.layer2, self.layer3 = stages
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride, norm_layer, rates):
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = downsample_conv(self.inplanes, out, kernel_size=1, stride=stride, norm_layer=norm_layer)
        block_list = []
        for i, rate in enumerate(rates):
            block_list.append(Bottleneck(self.inplanes, planes, stride if i == 0 else 1, downsample if i == 0 else None,
                                         norm_layer=norm_layer, drop_path=DropPath(rate) if rate > 0 else None))
            self.inplanes = out
        return nn.Sequential(*block_list)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))
