"""Residual networks, their plain twins and SE-ResNets.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016):

- section 3.3 and table 1: the ImageNet networks. A 7x7 stride-2 stem and a 3x3 stride-2 max
  pool, four stages of widths 64/128/256/512 (each after the first halves the resolution),
  global average pooling and one fully connected layer. ResNet-18/34 stack basic blocks (two 3x3
  convolutions), ResNet-50/101/152 bottleneck blocks (1x1 reduce, 3x3, 1x1 expand to 4x the
  width). Shortcuts are identities, or projections where the shape changes (option B).
- section 4.2: the CIFAR networks. A 3x3 stem and three stages of widths 16/32/64 with n basic
  blocks each (6n+2 layers), whose shortcuts are identities that subsample and pad the extra
  channels with zeros (option A), so that they add no parameter.
- section 4.1: the plain networks, the same layers without any shortcut, which degrade as they
  get deeper.

Hu, Shen and Sun, "Squeeze-and-Excitation Networks" (CVPR 2018), figure 3: the SE-ResNet block
rescales the channels of the residual branch before the addition.

Huang, Sun, Liu, Sedra and Weinberger, "Deep Networks with Stochastic Depth" (ECCV 2016): in
training, each block's residual branch is dropped for a random share of the samples, a share
that grows linearly with depth up to ``drop_path_rate`` in the last block (section 3, the
"linear decay rule"; timm's drop path).

Szegedy et al., "Going Deeper with Convolutions" (CVPR 2015), section 5: global average pooling
instead of fully connected layers on the last feature map improved top-1 accuracy by 0.6%;
``head="fc"`` builds the fully connected head it replaced, for that ablation.

Module names follow torchvision's ``resnet.py`` (and timm's for the SE module), so their state
dicts load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.se import SqueezeExcitation

STEMS = ("cifar", "imagenet")
SHORTCUTS = ("A", "B")
HEADS = ("gap", "fc")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by ``stride`` and padded with ``extra_channels`` zero
    channels, so that it matches a block that widens and downsamples without any parameter."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def shortcut_for(in_channels: int, out_channels: int, stride: int, option: str) -> nn.Module:
    """The shortcut of a block: the identity when the shape is kept, else option A or B."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if option == "A":
        return ZeroPadShortcut(out_channels - in_channels, stride)
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class DropPath(nn.Module):
    """Stochastic depth of a residual branch: in training, zero it for a random ``rate`` of the
    samples and scale it by 1 / (1 - rate) for the others, so that its expected value is kept.
    (timm.layers.DropPath does the same; importing timm here would cost every cnnlab command
    a second and a half.)"""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1 - self.rate)
        return x * keep / (1 - self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class Block(nn.Module):
    """What basic and bottleneck blocks share: ReLU(SE(F(x)) + shortcut(x)), or ReLU(SE(F(x)))
    in a plain network; subclasses define the residual branch F and ``last_bn``, its last
    BatchNorm."""

    expansion: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        shortcut: str,
        plain: bool,
        se_reduction: int | None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.se: nn.Module = (
            nn.Identity() if se_reduction is None else SqueezeExcitation(out_channels, se_reduction)
        )
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path else nn.Identity()
        self.downsample: nn.Module | None = (
            None if plain else shortcut_for(in_channels, out_channels, stride, shortcut)
        )

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.se(self.residual(x)))
        if self.downsample is not None:
            out = out + self.downsample(x)
        return self.relu(out)


class BasicBlock(Block):
    """Two 3x3 convolutions, the first one strided (table 1, ResNet-18/34; section 4.2)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        shortcut: str,
        plain: bool,
        se_reduction: int | None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(in_channels, width, stride, shortcut, plain, se_reduction, drop_path)
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(Block):
    """1x1 down to ``width``, 3x3, 1x1 up to ``4 * width`` (figure 5 right, ResNet-50/101/152).

    The stride sits on the 3x3 convolution, not on the first 1x1 as in the paper: torchvision's
    "ResNet v1.5" (and timm's) does so, because a strided 1x1 convolution ignores three quarters
    of its input.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        shortcut: str,
        plain: bool,
        se_reduction: int | None,
        drop_path: float = 0.0,
    ) -> None:
        out_channels = width * self.expansion
        super().__init__(
            in_channels, out_channels, stride, shortcut, plain, se_reduction, drop_path
        )
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


BLOCKS: dict[str, type[Block]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A stem, ``len(widths)`` stages of ``blocks[i]`` blocks (each stage after the first halves
    the resolution in its first block) and a head: global average pooling and a linear
    classifier, or fully connected layers.

    - ``block``: "basic" or "bottleneck"; ``widths`` are the bottleneck widths, a stage puts
      out 4x as many channels.
    - ``stem``: "cifar" (3x3 convolution, stride 1) or "imagenet" (7x7, stride 2), of
      ``widths[0]`` channels. ``stem_pool`` adds a max pooling that halves the resolution: the
      3x3 stride-2 one of table 1 after the ImageNet stem; a 2x2 one after the CIFAR stem, the
      cheap option for small inputs on a CPU, since every later layer then works on a quarter of
      the pixels.
    - ``shortcut``: "A" (zero-padding identity, no parameter) or "B" (1x1 projection with
      BatchNorm) where a block changes the shape; identities elsewhere.
    - ``plain``: no shortcut at all (section 4.1).
    - ``se_reduction``: squeeze-and-excitation with this reduction ratio in every block.
    - ``drop_path_rate``: stochastic depth, the rate of the last block (linear from zero).
    - ``zero_init_residual``: start each block's last BatchNorm scale at zero, so that every
      residual block is an identity at initialisation (Goyal et al. 2017), which speeds up early
      training; torchvision leaves it off by default.
    - ``head``: "gap" (global average pooling, ``dropout``, a linear classifier) or "fc" (the
      last map average-pooled to ``head_pool_size`` x ``head_pool_size``, the identity where it
      already has that size, then a fully connected layer of ``head_hidden`` units, ReLU,
      ``dropout`` and a linear classifier: the head GoogLeNet's average pooling replaced). Both
      are ``fc``, the module that transfer learning replaces or trains alone.
    """

    # The 2x2 stem pool needs two pixels; every later layer pads, so a 1x1 map goes through.
    min_input_size = 2

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] = (3, 3, 3),
        block: str = "basic",
        stem: str = "cifar",
        stem_pool: bool = False,
        shortcut: str = "B",
        plain: bool = False,
        se_reduction: int | None = None,
        zero_init_residual: bool = False,
        head: str = "gap",
        head_hidden: int = 1024,
        head_pool_size: int = 7,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} differ in length")
        if block not in BLOCKS:
            raise ValueError(f"block={block!r}: choose one of {', '.join(BLOCKS)}")
        if stem not in STEMS:
            raise ValueError(f"stem={stem!r}: choose one of {', '.join(STEMS)}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r}: choose one of {', '.join(SHORTCUTS)}")
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(HEADS)}")
        if plain and zero_init_residual:
            raise ValueError(
                "zero_init_residual would make every block of a plain network output zeros"
            )
        if plain and drop_path_rate:
            raise ValueError("drop_path_rate would drop whole blocks of a plain network")
        block_cls = BLOCKS[block]
        total, index = sum(blocks), 0

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False)
            pool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_chans, widths[0])
            pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool if stem_pool else nn.Identity()

        in_channels = widths[0]
        for i, (width, depth) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                rate = drop_path_rate * index / max(1, total - 1)
                layers.append(
                    block_cls(in_channels, width, stride, shortcut, plain, se_reduction, rate)
                )
                index += 1
                in_channels = width * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(widths)

        if head == "gap":
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.dropout: nn.Module = nn.Dropout(dropout)
            self.fc: nn.Module = nn.Linear(in_channels, num_classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(head_pool_size)
            self.dropout = nn.Identity()  # this head drops its hidden units instead
            self.fc = nn.Sequential(
                nn.Linear(in_channels * head_pool_size**2, head_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(head_hidden, num_classes),
            )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, Block) and zero_init_residual:
                nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
