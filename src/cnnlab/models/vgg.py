"""VGG networks.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(ICLR 2015): section 2.1 and table 1 (stacks of 3x3 stride-1 convolutions padded by 1, each
followed by ReLU, five 2x2 stride-2 max poolings, then FC-4096, FC-4096 and FC-classes with
dropout 0.5 after the first two) and section 3.2, "testing" (the fully connected layers become a
7x7 and two 1x1 convolutions, and the class score map is averaged over space). BatchNorm after
each convolution (Ioffe and Szegedy 2015) is an option, as in torchvision's ``vgg*_bn``.

Section 2.3 explains the 3x3 stacks: k stacked 3x3 convolutions see a (2k + 1) x (2k + 1)
window, as one convolution of that size does, with k non-linearities instead of one and fewer
weights (27C^2 for three 3x3 layers of C channels against 49C^2 for one 7x7). ``large_kernels``
builds the single large convolutions, for that ablation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Table 1: the output channels of each convolution, "M" for a max pooling.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG-11
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG-13
    "D": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
    ),  # VGG-16
    "E": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),  # VGG-19
}  # fmt: skip


def conv_layers(
    config: tuple[int | str, ...], width: float, large_kernels: bool
) -> list[tuple[int, int] | str]:
    """The (output channels, kernel size) of each convolution of ``config``, "M" for a max
    pooling. ``width`` scales every convolution's channels (at least 8, so that no layer
    vanishes); ``large_kernels`` merges each run of k 3x3 convolutions between two poolings into
    one (2k + 1) x (2k + 1) convolution with the run's last width, whose window is the run's."""
    layers: list[tuple[int, int] | str] = []
    for v in config:
        if v == "M":
            layers.append("M")
            continue
        channels = max(8, round(v * width))
        if large_kernels and layers and layers[-1] != "M":
            layers[-1] = (channels, layers[-1][1] + 2)
        else:
            layers.append((channels, 3))
    return layers


def make_features(
    layers: list[tuple[int, int] | str], in_chans: int, batch_norm: bool
) -> nn.Sequential:
    """The convolutional part, numbered as torchvision's ``features`` so its weights load."""
    modules: list[nn.Module] = []
    channels = in_chans
    for layer in layers:
        if layer == "M":
            modules.append(nn.MaxPool2d(2, stride=2))
            continue
        out_channels, kernel_size = layer
        modules.append(nn.Conv2d(channels, out_channels, kernel_size, padding=kernel_size // 2))
        if batch_norm:
            modules.append(nn.BatchNorm2d(out_channels))
        modules.append(nn.ReLU(inplace=True))
        channels = out_channels
    return nn.Sequential(*modules)


class FCConv2d(nn.Conv2d):
    """A convolution that replaces a fully connected layer and loads its weights.

    A fully connected layer on a flattened (C, k, k) map is the k x k convolution whose kernel is
    its (out, C * k * k) weight reshaped to (out, C, k, k): such weights are reshaped on loading.
    """

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        key = prefix + "weight"
        weight = state_dict.get(key)
        if weight is not None and weight.dim() == 2 and weight.numel() == self.weight.numel():
            state_dict[key] = weight.reshape(self.weight.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)


class StretchToAtLeast(nn.Module):
    """Stretches each side of a map that is shorter than ``size`` to ``size`` by adaptive
    average pooling (repeating rows and columns), so that a ``size`` x ``size`` kernel fits; the
    dense network's adaptive pooling does the same, so both agree on small inputs."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h >= self.size and w >= self.size:
            return x
        return F.adaptive_avg_pool2d(x, (max(h, self.size), max(w, self.size)))


class VGG(nn.Module):
    """A table 1 configuration (``config`` A, B, D or E: VGG-11, 13, 16 or 19) and its classifier.

    The dense classifier sees the last map average-pooled to ``pool_size`` x ``pool_size``
    (the identity at 224x224, where the map is 7x7); module names and order are torchvision's
    ``VGG``, whose state dict loads as is. ``fully_convolutional=True`` makes the classifier the
    convolutions of section 3.2 and averages the class score map: it takes any input of 32x32 or
    more, loads the dense network's weights, and gives its logits up to 224x224 inputs.

    ``hidden`` and ``pool_size`` shrink the classifier for small inputs: at 32x32 the last map
    is 1x1, and ``pool_size=1`` avoids feeding 49 copies of it to a 25,088-input layer.

    ``width`` multiplies the channels of every convolution (rounded, at least 8); 1.0 is table
    1. ``large_kernels=True`` replaces each stack of k 3x3 convolutions between two poolings by
    one (2k + 1) x (2k + 1) convolution of the stack's output width and the same receptive
    field (section 2.3), with one BatchNorm after it when ``batch_norm``.
    """

    min_input_size: int = 32

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        config: str = "D",
        batch_norm: bool = False,
        width: float = 1.0,
        large_kernels: bool = False,
        fully_convolutional: bool = False,
        hidden: int = 4096,
        pool_size: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"config={config!r}: choose one of table 1's {sorted(CONFIGS)}")
        self.fully_convolutional = fully_convolutional
        if width <= 0:
            raise ValueError(f"width ({width}) must be positive")
        layers = conv_layers(CONFIGS[config], width, large_kernels)
        self.features = make_features(layers, in_chans, batch_norm)
        channels = [layer[0] for layer in layers if layer != "M"][-1]
        self.avgpool = (
            StretchToAtLeast(pool_size) if fully_convolutional else nn.AdaptiveAvgPool2d(pool_size)
        )

        def fc(in_channels: int, out_channels: int, k: int) -> nn.Module:
            """A fully connected layer on a (in_channels, k, k) map, or its convolution."""
            if fully_convolutional:
                return FCConv2d(in_channels, out_channels, k)
            return nn.Linear(in_channels * k * k, out_channels)

        self.classifier = nn.Sequential(
            fc(channels, hidden, pool_size),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            fc(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            fc(hidden, num_classes, 1),
        )
        # torchvision's initialisation; the fully connected layers and their convolutions alike.
        for m in self.modules():
            if isinstance(m, (nn.Linear, FCConv2d)):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        if self.fully_convolutional:
            return self.classifier(x).mean((2, 3))
        return self.classifier(torch.flatten(x, 1))
