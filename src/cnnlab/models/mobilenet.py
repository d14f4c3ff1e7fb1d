"""MobileNet v1.

Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto and Adam, "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications" (arXiv:1704.04861, 2017):
section 3.1 and figure 3 (a depthwise separable convolution is a 3x3 depthwise convolution and a
1x1 pointwise convolution, each followed by BatchNorm and ReLU), section 3.2 and table 1 (the
28-layer body), section 3.3 (the width multiplier alpha), section 3.4 (the resolution
multiplier rho), table 4 (the same body with standard 3x3 convolutions, "Conv MobileNet", costs
4866M mult-adds and 29.3M parameters against 569M and 4.2M) and table 6 (1.0, 0.75, 0.5 and 0.25
MobileNet-224 have 4.2M, 2.6M, 1.3M and 0.5M parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Table 1 after its first (full) convolution: the output channels of each depthwise separable
# layer's pointwise convolution, and the stride of its depthwise convolution. Table 1 prints
# "Conv dw / s2" for the last layer although it maps 7x7 to 7x7; the reference implementations
# (TF-slim, Keras, timm) use stride 1 there, and so does this one.
STEM_CHANNELS = 32
SEPARABLE_LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class ConvBNReLU(nn.Sequential):
    """A convolution without bias (the BatchNorm after it has one), BatchNorm and ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparable(nn.Module):
    """Figure 3 (right): a 3x3 depthwise convolution filters each channel on its own, then a 1x1
    pointwise convolution mixes the channels; 9C + C * C' weights instead of 9 * C * C'."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def scaled_channels(channels: int, alpha: float) -> int:
    """Section 3.3: alpha thins every layer uniformly; TF-slim's floor of 8 channels keeps very
    small multipliers from producing empty layers."""
    return max(8, int(channels * alpha))


class MobileNetV1(nn.Module):
    """Table 1: a strided 3x3 convolution, 13 depthwise separable layers, global average pooling
    and a fully connected classifier.

    ``alpha`` is the width multiplier of section 3.3: every layer has ``alpha`` times the channels
    of table 1 (parameters and cost fall by about alpha squared).

    ``rho`` is the resolution multiplier of section 3.4. The paper applies it by feeding smaller
    images (224 x rho = 192, 160 or 128); here the data pipeline keeps delivering
    ``data.image_size`` images and the model resizes each H x W batch to round(rho H) x round(rho W)
    (bilinear, antialiased when shrinking) before its first convolution, so rho = 0.857, 0.714
    and 0.571 turn 224 inputs into the paper's 192, 160 and 128 and cut the cost by rho squared,
    with the parameters unchanged.

    ``separable=False`` is table 4's "Conv MobileNet": each depthwise separable layer becomes one
    standard 3x3 convolution (with BatchNorm and ReLU) of the same channels and stride, which
    costs 1 / (1 / N + 1 / 9) times as much for N output channels (section 3.1), 8 to 9 times.

    ``small_input`` gives the first convolution stride 1, so the network downsamples 16 times
    instead of 32: a 28x28 Fashion-MNIST image ends as a 2x2 map rather than 1x1.
    """

    min_input_size: int = 32

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        alpha: float = 1.0,
        rho: float = 1.0,
        small_input: bool = False,
        separable: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if alpha <= 0 or rho <= 0:
            raise ValueError(f"alpha ({alpha}) and rho ({rho}) must be positive")
        self.rho = rho
        stem_stride = 1 if small_input else 2
        channels = scaled_channels(STEM_CHANNELS, alpha)
        self.stem = ConvBNReLU(in_chans, channels, 3, stem_stride)
        layers = []
        for width, stride in SEPARABLE_LAYERS:
            out_channels = scaled_channels(width, alpha)
            if separable:
                layers.append(DepthwiseSeparable(channels, out_channels, stride))
            else:
                layers.append(ConvBNReLU(channels, out_channels, 3, stride))
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        # The input size whose last feature map is 1x1: the product of all strides, and larger by
        # 1 / rho since the input is shrunk before the stem.
        downsampling = stem_stride * math.prod(stride for _, stride in SEPARABLE_LAYERS)
        self.min_input_size = math.ceil(downsampling / rho)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rho != 1.0:
            size = (round(x.shape[-2] * self.rho), round(x.shape[-1] * self.rho))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=self.rho < 1.0)
        x = self.layers(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
