"""OFA's image stem: the first three stages of a bottleneck ResNet (1024 channels, stride 16).

Parameter names follow torchvision / OFA (`conv1`, `bn1`, `layer1.0.downsample.1`, ...) so that
official checkpoints load as they are.
"""
import torch
import torch.nn as nn

from .layers import DropPath, drop_path_rates

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

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, init in (("weight", torch.ones), ("bias", torch.zeros),
                           ("running_mean", torch.zeros), ("running_var", torch.ones)):
            self.register_buffer(name, init(num_features))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def make_norm(kind: str):
    if kind == "frozen":
        return FrozenBatchNorm2d
    if kind == "sync":  # OFA's --sync-bn uses eps 1e-3
        return lambda c: nn.SyncBatchNorm(c, eps=1e-3)
    return nn.BatchNorm2d


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm=nn.BatchNorm2d, drop_path=0.0):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path, batch_dim=0)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(identity + self.drop_path(out))


class ResNet(nn.Module):
    """Stem + layer1..layer3 of a bottleneck ResNet; returns [B, 1024, H/16, W/16]."""

    out_channels = 1024

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
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                norm_layer(planes * Bottleneck.expansion),
            )
        block_list = [Bottleneck(self.inplanes, planes, stride, downsample, norm_layer, rates[0])]
        self.inplanes = planes * Bottleneck.expansion
        block_list += [Bottleneck(self.inplanes, planes, norm=norm_layer, drop_path=r) for r in rates[1:]]
        return nn.Sequential(*block_list)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))
