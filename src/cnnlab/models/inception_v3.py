"""Inception v3, through torchvision.

Szegedy, Vanhoucke, Ioffe, Shlens and Wojna, "Rethinking the Inception Architecture for Computer
Vision" (CVPR 2016): section 6 and table 1 (the network), section 4 (one auxiliary classifier, on
the 17x17 grid, acting as a regulariser). torchvision's ``inception_v3`` builds it; this wrapper
gives it cnnlab's constructor (``num_classes``, ``in_chans``, ``aux_logits``) and output
convention, and an auxiliary head that stays valid on small inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception


class InceptionAux(inception.InceptionAux):
    """torchvision's auxiliary classifier: 5x5 average pooling with stride 3, a 1x1 convolution,
    an unpadded 5x5 convolution, global average pooling and a linear classifier.

    The 5x5/3 pooling turns the 17x17 grid of a 299x299 input into the 5x5 the next convolution
    needs; inputs below 299 leave maps on which it gives less (or cannot run), so those are
    average-pooled adaptively to 5x5 instead, and training works down to
    ``InceptionV3.min_input_size``. From 17x17 up it is torchvision's head.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = min(x.shape[-2:]) < 17
        x = F.adaptive_avg_pool2d(x, 5) if small else F.avg_pool2d(x, 5, stride=3)
        x = self.conv1(self.conv0(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionV3(nn.Module):
    """torchvision's Inception v3 with ``in_chans`` input channels.

    In training mode with ``aux_logits`` the forward pass returns the tuple ``(main, aux)``; in
    eval mode it returns the main logits and skips the auxiliary head. ``net`` is torchvision's
    ``Inception3``, so its checkpoints load into ``model.net``.
    """

    min_input_size: int = 75

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        blocks = [
            inception.BasicConv2d,
            inception.InceptionA,
            inception.InceptionB,
            inception.InceptionC,
            inception.InceptionD,
            inception.InceptionE,
            InceptionAux,
        ]
        self.net = inception.inception_v3(
            weights=None,
            num_classes=num_classes,
            aux_logits=aux_logits,
            init_weights=True,
            dropout=dropout,
            inception_blocks=blocks,
        )
        if in_chans != 3:
            stem = inception.BasicConv2d(in_chans, 32, kernel_size=3, stride=2)
            # torchvision's initialisation of every convolution it builds.
            nn.init.trunc_normal_(stem.conv.weight, std=0.1, a=-2, b=2)
            self.net.Conv2d_1a_3x3 = stem

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.net(x)
        # In training mode with aux_logits torchvision returns an InceptionOutputs namedtuple.
        return tuple(out) if isinstance(out, tuple) else out
