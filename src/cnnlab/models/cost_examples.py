"""The cost arithmetic of the source texts, as modules whose parameters and MACs can be counted.

- Szegedy et al., "Going Deeper with Convolutions" (CVPR 2015), section 4: a 1x1 convolution
  reduces the depth before the expensive 5x5 convolution of an inception module; on the first
  module's 28x28x192 input with 32 filters, a 16-filter reduction cuts ~120M multiplications
  to ~12.4M and 153,600 weights to 15,872.
- The same paper, section 5: global average pooling instead of a fully connected layer on the
  final 7x7x1024 features saves the dense layer's 7*7*1024*1024 = 51,380,224 weights.
- Howard et al., "MobileNets" (2017), section 3.1: a depthwise separable convolution (one 3x3
  filter per input channel, then 1x1 convolutions mixing the channels); on a 6x6x3 input with
  5 filters it needs 432 + 240 = 672 multiplications against 2,160 for a standard convolution.

These are single layers, not classifiers: each maps its input to a feature map (or feature
vector) and ignores ``num_classes``, which it takes only so that it composes like every model.
Convolutions and the dense layer have no biases, so the weight counts are exactly the texts'.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class InceptionBranch5x5(nn.Module):
    """The 5x5 branch of an inception module: ``filters`` 5x5 convolutions with "same" padding,
    after a 1x1 reduction to ``reduce`` channels unless ``reduce`` is None (the naive module)."""

    min_input_size = 1

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 192,
        filters: int = 32,
        reduce: int | None = None,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_chans
        if reduce is not None:
            layers["reduce"] = nn.Conv2d(in_chans, reduce, 1, bias=False)
            channels = reduce
        layers["conv5x5"] = nn.Conv2d(channels, filters, 5, padding=2, bias=False)
        self.branch = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


class DenseHead(nn.Module):
    """A fully connected layer of ``features`` units on the flattened ``size`` x ``size`` x
    ``in_chans`` feature map: what GoogLeNet's average pooling replaces. Being fully connected,
    it accepts only ``size`` x ``size`` inputs."""

    min_input_size = 7

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1024, size: int = 7, features: int = 1024
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_chans * size * size, features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


class GlobalAveragePoolingHead(nn.Module):
    """Averages each channel of the feature map to one number: no weights, any input size."""

    min_input_size = 1

    def __init__(self, num_classes: int = 10, in_chans: int = 1024) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(x))


class Conv3x3(nn.Module):
    """``filters`` 3x3 convolutions without padding, standard or depthwise separable."""

    min_input_size = 3

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        filters: int = 5,
        depthwise_separable: bool = False,
    ) -> None:
        super().__init__()
        if depthwise_separable:
            self.conv: nn.Module = nn.Sequential(
                OrderedDict(
                    depthwise=nn.Conv2d(in_chans, in_chans, 3, groups=in_chans, bias=False),
                    pointwise=nn.Conv2d(in_chans, filters, 1, bias=False),
                )
            )
        else:
            self.conv = nn.Conv2d(in_chans, filters, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
