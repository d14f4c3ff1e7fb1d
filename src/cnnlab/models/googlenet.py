"""GoogLeNet (Inception v1) and SE-Inception.

Szegedy et al., "Going Deeper with Convolutions" (CVPR 2015): section 4 and figure 2 (the
inception module, naive and with 1x1 dimension reductions), section 5, table 1 and figure 3
(GoogLeNet: a stem with local response normalisation, the nine inception modules 3a to 5b, global
average pooling, dropout 0.4 and a linear classifier; two auxiliary classifiers on 4a and 4d whose
losses count with weight 0.3 during training and which are discarded at inference).

Hu, Shen and Sun, "Squeeze-and-Excitation Networks" (CVPR 2018), figure 2: SE-Inception rescales
the channels of each inception module's concatenated output.

Options reproduce torchvision's ``googlenet``, which departs from the paper: BatchNorm after every
convolution and no LRN, a 3x3 kernel in the "5x5" branch (pytorch/vision#906), a 2x2 kernel in the
max pooling after 4e, auxiliary heads that pool adaptively and dropout 0.2 before the classifier.
Module names follow torchvision's so that its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.se import SqueezeExcitation


class InceptionFilters(NamedTuple):
    """One row of table 1: the width of each branch and of the 1x1 reductions before them."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int


# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj of inception (3a) to (5b).
GOOGLENET_TABLE: dict[str, InceptionFilters] = {
    "3a": InceptionFilters(64, 96, 128, 16, 32, 32),
    "3b": InceptionFilters(128, 128, 192, 32, 96, 64),
    "4a": InceptionFilters(192, 96, 208, 16, 48, 64),
    "4b": InceptionFilters(160, 112, 224, 24, 64, 64),
    "4c": InceptionFilters(128, 128, 256, 24, 64, 64),
    "4d": InceptionFilters(112, 144, 288, 32, 64, 64),
    "4e": InceptionFilters(256, 160, 320, 32, 128, 128),
    "5a": InceptionFilters(256, 160, 320, 32, 128, 128),
    "5b": InceptionFilters(384, 192, 384, 48, 128, 128),
}


def scaled(channels: int, width: float) -> int:
    """A width-multiplied layer width (as MobileNet's alpha does to its table), at least 1."""
    return max(1, round(channels * width))


class BasicConv2d(nn.Module):
    """A same-padded convolution and a ReLU ("all the convolutions [...] use rectified linear
    activation"); with ``batch_norm``, BatchNorm in between takes the place of the conv bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=not batch_norm,
        )
        # torchvision's eps, without which its weights would not give its outputs.
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3) if batch_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """1x1, 3x3 and 5x5 convolutions and a 3x3 max pooling side by side, concatenated along the
    channels (figure 2).

    With ``bottleneck`` (figure 2b) 1x1 convolutions reduce the channels before the 3x3 and 5x5
    convolutions and project them after the pooling. Without (figure 2a, the naive module) the
    pooling branch passes all its input channels on, so the width grows from module to module:
    the blow-up in cost that section 4 gives as the reason for the reductions.
    """

    def __init__(
        self,
        in_channels: int,
        filters: InceptionFilters,
        bottleneck: bool = True,
        batch_norm: bool = False,
        large_kernel: int = 5,
        se_reduction: int | None = None,
    ) -> None:
        super().__init__()
        f = filters

        def conv(cin: int, cout: int, kernel_size: int) -> BasicConv2d:
            return BasicConv2d(cin, cout, kernel_size, batch_norm=batch_norm)

        pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch1 = conv(in_channels, f.ch1x1, 1)
        if bottleneck:
            self.branch2 = nn.Sequential(
                conv(in_channels, f.ch3x3red, 1), conv(f.ch3x3red, f.ch3x3, 3)
            )
            self.branch3 = nn.Sequential(
                conv(in_channels, f.ch5x5red, 1), conv(f.ch5x5red, f.ch5x5, large_kernel)
            )
            self.branch4 = nn.Sequential(pool, conv(in_channels, f.pool_proj, 1))
            self.out_channels = f.ch1x1 + f.ch3x3 + f.ch5x5 + f.pool_proj
        else:
            self.branch2 = conv(in_channels, f.ch3x3, 3)
            self.branch3 = conv(in_channels, f.ch5x5, large_kernel)
            self.branch4 = pool
            self.out_channels = f.ch1x1 + f.ch3x3 + f.ch5x5 + in_channels
        self.se: nn.Module = nn.Identity()
        if se_reduction is not None:
            self.se = SqueezeExcitation(self.out_channels, se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))
        return self.se(torch.cat(branches, 1))


class InceptionAux(nn.Module):
    """An auxiliary classifier (section 5): 5x5 average pooling with stride 3, a 1x1 convolution
    with 128 filters, a fully connected layer of 1024 units, dropout 0.7 and a linear classifier.

    On a 224x224 input the pooling turns the 14x14 maps of 4a and 4d into the 4x4 for which fc1
    is sized (128 * 4 * 4 inputs). Maps smaller than 14x14 (inputs below 224) would leave less,
    or no room for a 5x5 window, so they skip it; an adaptive average pooling to 4x4 follows
    either way (an identity at 224), and the head runs with the same weights on any input size.
    ``adaptive_pool`` skips the 5x5/3 pooling at every size, as torchvision does.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        batch_norm: bool = False,
        dropout: float = 0.7,
        adaptive_pool: bool = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.adaptive_pool = adaptive_pool
        channels, hidden = scaled(128, width), scaled(1024, width)
        self.conv = BasicConv2d(in_channels, channels, 1, batch_norm=batch_norm)
        self.fc1 = nn.Linear(channels * 4 * 4, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adaptive_pool and min(x.shape[-2:]) >= 14:
            x = F.avg_pool2d(x, 5, stride=3)
        x = self.conv(F.adaptive_avg_pool2d(x, 4))
        return self.fc2(self.dropout(self.relu(self.fc1(torch.flatten(x, 1)))))


class GoogLeNet(nn.Module):
    """The GoogLeNet of table 1 and figure 3, with options for torchvision's variant and SE.

    In training mode with ``aux_logits`` the forward pass returns ``(main, aux1, aux2)``, the
    auxiliary logits of 4a and 4d; in eval mode it returns the main logits and skips the
    auxiliary heads. Max poolings round their output size up, as Caffe (the paper's framework)
    does: 112 -> 56 -> 28 -> 14 -> 7 on a 224 input. The 3x3 pooling after 4e needs at least
    2x2 maps there, hence inputs of 31x31 or more (15x15 with ``pool4_kernel=2``).

    ``bottleneck=False`` builds the naive modules of figure 2a. ``lrn`` puts local response
    normalisation (the paper's and its Caffe model's: size 5, alpha 1e-4, beta 0.75) after the
    first pooling and after the 3x3 convolution of the stem; ``batch_norm`` adds BatchNorm after
    every convolution. ``large_kernel`` is the kernel size of the "5x5" branch and
    ``pool4_kernel`` that of the max pooling between 4e and 5a. ``se_reduction`` appends a
    squeeze-and-excitation block with that reduction ratio to every inception module.

    For experiments on a CPU, ``width`` multiplies every width of table 1 (stem, inception
    branches, auxiliary heads), and ``small_input`` makes the first convolution stride 1 and drops
    the first max pooling: a 28x28 input then gives the stages the 14, 7 and 4 sided maps that a
    112x112 input gives the paper's network.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        bottleneck: bool = True,
        aux_logits: bool = True,
        lrn: bool = True,
        batch_norm: bool = False,
        large_kernel: int = 5,
        pool4_kernel: int = 3,
        aux_adaptive_pool: bool = False,
        dropout: float = 0.4,
        aux_dropout: float = 0.7,
        se_reduction: int | None = None,
        width: float = 1.0,
        small_input: bool = False,
    ) -> None:
        super().__init__()

        def lrn_layer() -> nn.Module:
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75) if lrn else nn.Identity()

        # The stem halves the input twice; the three max poolings that follow, three times more.
        self.min_input_size = 8 if small_input else 31
        stem, reduced = scaled(64, width), scaled(192, width)
        self.conv1 = BasicConv2d(
            in_chans, stem, 7, stride=1 if small_input else 2, batch_norm=batch_norm
        )
        self.maxpool1 = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = lrn_layer()
        # Table 1's "convolution 3x3" row: a 1x1 reduction (conv2), then the 3x3 (conv3).
        self.conv2 = BasicConv2d(stem, stem, 1, batch_norm=batch_norm)
        self.conv3 = BasicConv2d(stem, reduced, 3, batch_norm=batch_norm)
        self.lrn2 = lrn_layer()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        channels = reduced
        for name, filters in GOOGLENET_TABLE.items():
            widths = InceptionFilters(*(scaled(c, width) for c in filters))
            module = Inception(channels, widths, bottleneck, batch_norm, large_kernel, se_reduction)
            self.add_module(f"inception{name}", module)
            channels = module.out_channels
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(pool4_kernel, stride=2, ceil_mode=True)

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if aux_logits:
            aux_args = (num_classes, batch_norm, aux_dropout, aux_adaptive_pool, width)
            self.aux1 = InceptionAux(self.inception4a.out_channels, *aux_args)
            self.aux2 = InceptionAux(self.inception4d.out_channels, *aux_args)

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

        # Without BatchNorm (the paper's network) the signal has to cross 22 layers on its own:
        # He initialisation keeps the variance of ReLU activations from layer to layer.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        run_aux = self.training and self.aux1 is not None
        x = self.lrn1(self.maxpool1(self.conv1(x)))
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(x))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux = [self.aux1(x)] if run_aux else []
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if run_aux:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return (logits, *aux) if run_aux else logits
