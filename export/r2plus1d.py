"""R(2+1)D-18 video network, key-for-key compatible with torchvision's `r2plus1d_18`.

Each 3x3x3 convolution is factored into a spatial (1x3x3) and a temporal (3x1x1)
convolution. Layout: input (N, 3, T, H, W) float; output (N, num_classes) logits.
Every convolution is bias-free; time is downsampled with space (16 -> 16 -> 8 -> 4 -> 2).
"""

from __future__ import annotations

from torch import Tensor, nn


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm3d(channels), nn.ReLU(inplace=True)]


class Conv2Plus1D(nn.Sequential):
    """Spatial 1x3x3 conv -> BN -> ReLU -> temporal 3x1x1 conv (keys .0, .1, .3)."""

    def __init__(self, in_planes: int, out_planes: int, mid_planes: int, stride: int = 1):
        super().__init__(
            nn.Conv3d(in_planes, mid_planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            *_bn_relu(mid_planes),
            nn.Conv3d(mid_planes, out_planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        # Mid channels give the factored pair the parameter count of a full 3x3x3 conv
        # in_planes -> planes; computed once per block and used by both of its convs.
        mid = (in_planes * planes * 27) // (in_planes * 9 + 3 * planes)
        self.conv1 = nn.Sequential(Conv2Plus1D(in_planes, planes, mid, stride), *_bn_relu(planes))
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class R2Plus1D18(nn.Module):
    def __init__(self, num_classes: int = 1):
        super().__init__()
        # The stem's mid channels are fixed at 45 (not given by the block formula).
        self.stem = nn.Sequential(
            nn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            *_bn_relu(45),
            nn.Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), bias=False),
            *_bn_relu(64),
        )
        self.layer1 = self._layer(64, 64, stride=1)
        self.layer2 = self._layer(64, 128, stride=2)
        self.layer3 = self._layer(128, 256, stride=2)
        self.layer4 = self._layer(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def _layer(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
