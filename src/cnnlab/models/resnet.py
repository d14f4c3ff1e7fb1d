"""Residual networks.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016): section 3.2
(identity shortcuts, projection shortcuts when the shape changes) and section 4.2 (the CIFAR
networks: a 3x3 stem, three stages of widths 16/32/64 at decreasing resolution, global average
pooling and one fully connected layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; the input is added back before the last ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Projection shortcut (option B of section 3.3): a strided 1x1 convolution.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # Starting each residual branch at zero makes the block an identity at initialisation
        # (Goyal et al. 2017), which speeds up early training of small networks.
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, ``len(widths)`` stages of basic blocks (each after the first halves the
    resolution), global average pooling and a linear classifier.

    ``stem_pool`` adds a 2x2 max pooling after the stem: the cheap option for small inputs on a
    CPU, since every later layer then works on a quarter of the pixels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] = (3, 3, 3),
        stem_pool: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} differ in length")
        stem: list[nn.Module] = [
            conv3x3(in_chans, widths[0]),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*stem)
        stages, in_channels = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, blocks, strict=True)):
            layers = [BasicBlock(in_channels, width, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
