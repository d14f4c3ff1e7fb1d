"""Squeeze-and-excitation.

Hu, Shen and Sun, "Squeeze-and-Excitation Networks" (CVPR 2018), section 3: global average
pooling squeezes each channel to one number; two fully connected layers (reduction ratio r,
ReLU, then sigmoid) turn those into per-channel weights that rescale the feature map.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """Rescales the channels of a (N, C, H, W) map by weights computed from its global average.

    The two fully connected layers are 1x1 convolutions with biases, as in the reference
    implementations (timm's ``SEModule``), so parameter counts and weights match them:
    ``2 * C * (C // r) + C // r + C`` parameters.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.relu(self.fc1(scale))))
