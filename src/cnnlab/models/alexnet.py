"""AlexNet.

Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks" (NIPS 2012), section 3: five convolutional layers (96 11x11 stride-4 kernels, 256 5x5,
384 3x3, 384 3x3, 256 3x3) and three fully connected layers (4096, 4096, classes), ReLU after
each (3.1); the network split over two GPUs, conv2, conv4 and conv5 seeing only the maps on
their own GPU (3.2); local response normalisation after the ReLUs of conv1 and conv2 (3.3);
overlapping 3x3 stride-2 max pooling after both normalisations and after conv5 (3.4); dropout
0.5 in the first two fully connected layers (section 4.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def local_response_norm(
    size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> nn.LocalResponseNorm:
    """b = a / (k + alpha * sum of a^2 over ``size`` adjacent maps)^beta, with section 3.3's
    constants. PyTorch divides alpha by ``size`` and the paper's formula does not."""
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)


class AlexNet(nn.Module):
    """Five convolutions, 6x6 adaptive average pooling and three fully connected layers.

    ``widths`` are the filters of conv1 to conv5; ``groups=2`` splits conv2, conv4 and conv5 as
    the two GPUs did (the normalisation still sums over neighbouring maps of both halves).
    ``overlapping_pool=False`` pools 2x2 with stride 2 instead, the paper's comparison.

    Layers are numbered as in torchvision's ``AlexNet`` (``features``, ``avgpool``,
    ``classifier``, dropout on the inputs of the first two fully connected layers), so with
    ``widths=(64, 192, 384, 256, 256)`` and ``lrn=False`` torchvision's state dict loads as is.
    The first convolution pads by 2, which makes a 224x224 input give the 55x55 maps of figure 2.
    """

    min_input_size: int = 63

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        widths: Sequence[int] = (96, 256, 384, 384, 256),
        hidden: int = 4096,
        groups: int = 1,
        lrn: bool = True,
        overlapping_pool: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths {list(widths)}: AlexNet has five convolutional layers")
        w1, w2, w3, w4, w5 = widths

        def relu_norm_pool(norm: bool) -> list[nn.Module]:
            pool = nn.MaxPool2d(3, stride=2) if overlapping_pool else nn.MaxPool2d(2, stride=2)
            return [nn.ReLU(inplace=True), *([local_response_norm()] if norm else []), pool]

        self.features = nn.Sequential(
            nn.Conv2d(in_chans, w1, 11, stride=4, padding=2),
            *relu_norm_pool(lrn),
            nn.Conv2d(w1, w2, 5, padding=2, groups=groups),
            *relu_norm_pool(lrn),
            # conv3 is the one layer that connects the two GPUs' maps.
            nn.Conv2d(w2, w3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w3, w4, 3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(w4, w5, 3, padding=1, groups=groups),
            *relu_norm_pool(False),
        )
        # The identity at 224x224; smaller inputs (down to 63x63) are stretched to 6x6.
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(w5 * 6 * 6, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
