"""LeNet-5.

LeCun, Bottou, Bengio and Haffner, "Gradient-Based Learning Applied to Document Recognition"
(Proc. IEEE 1998), section II.B: on a 32x32 input, C1 (6 maps, 5x5 convolutions), S2
(subsampling), C3 (16 maps, 5x5, each connected to a subset of S2's maps by table I), S4, C5
(120 maps, 5x5, a 1x1 map on a 32x32 input), F6 (84 units) and one Euclidean RBF unit per class.
Every layer up to F6 is squashed by the scaled hyperbolic tangent of appendix A.

The options switch between that network and the common modern reading of it: ReLU, max
pooling, a fully connected C3 and a linear output layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Table I: the S2 maps (rows of the paper's table) that feed each of the 16 C3 maps. Six maps see
# three neighbouring S2 maps, six see four neighbouring ones, three see four non-neighbouring
# ones and the last sees all six, which breaks the symmetry between C3 maps with fewer weights.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159 and S = 2/3 (appendix A): f(1) = 1 and f(-1) = -1, and
    the gain is close to 1 around the origin."""

    def __init__(self, amplitude: float = 1.7159, slope: float = 2 / 3) -> None:
        super().__init__()
        self.amplitude, self.slope = amplitude, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.tanh(self.slope * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "scaled_tanh": ScaledTanh,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
}


class Subsampling(nn.Module):
    """An S layer: each unit adds up a non-overlapping 2x2 patch of its map, multiplies the sum by
    the map's trainable coefficient and adds the map's trainable bias (two parameters a map)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # A coefficient of 1/4 starts the layer as plain average pooling.
        self.weight = nn.Parameter(torch.full((channels,), 0.25))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch_sums = F.avg_pool2d(x, 2, divisor_override=1)
        return patch_sums * self.weight.view(-1, 1, 1) + self.bias.view(-1, 1, 1)


class PartialConv2d(nn.Module):
    """A convolution in which output map ``o`` sees only the input maps ``table[o]``.

    Only the kernels of existing connections are parameters (``sum(len(t)) * k * k`` weights and
    one bias a map), so parameter counts are the paper's; the forward pass scatters them into a
    dense kernel with zeros for the missing connections.
    """

    def __init__(
        self, in_channels: int, table: tuple[tuple[int, ...], ...], kernel_size: int
    ) -> None:
        super().__init__()
        out_idx = [o for o, inputs in enumerate(table) for _ in inputs]
        in_idx = [i for inputs in table for i in inputs]
        self.in_channels, self.out_channels, self.kernel_size = in_channels, len(table), kernel_size
        self.register_buffer("out_idx", torch.tensor(out_idx), persistent=False)
        self.register_buffer("in_idx", torch.tensor(in_idx), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(in_idx), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(len(table)))
        # nn.Conv2d's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with each
        # map's own fan-in.
        bound = torch.tensor([len(inputs) * kernel_size**2 for inputs in table]) ** -0.5
        with torch.no_grad():
            self.weight.uniform_(-1, 1).mul_(bound[out_idx].view(-1, 1, 1))
            self.bias.uniform_(-1, 1).mul_(bound)

    def dense_weight(self) -> torch.Tensor:
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, k, k)
        return dense.index_put((self.out_idx, self.in_idx), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


class RBFOutput(nn.Module):
    """One Euclidean radial basis function unit per class: y_i = sum_j (x_j - w_ij)^2.

    The paper fixed the prototypes w_i at -1/+1 (7x12 bitmaps of the characters, or codes chosen
    at random: the option taken here) and trained with a criterion close to the cross-entropy of
    -y (equation 9), so the logits are -y. The prototypes are a buffer, not parameters.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        codes = torch.randint(0, 2, (num_classes, in_features)).float() * 2 - 1
        self.register_buffer("prototypes", codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x.unsqueeze(1) - self.prototypes).square().sum(-1)


class LeNet5(nn.Module):
    """C1-S2-C3-S4-C5-F6-output for 32x32 inputs.

    ``activation`` is one of scaled_tanh (the paper's), tanh, sigmoid or relu. ``pooling`` is
    ``subsample`` (the paper's trainable S layers, followed by the activation), ``avg`` or
    ``max``. ``partial_c3`` uses table I for C3; ``output`` is ``rbf`` (the paper's) or
    ``linear``. ``pad_input`` pads smaller inputs to 32x32, as the paper did with the 28x28
    MNIST digits. C5 is a convolution: on an input larger than 32x32 its map is averaged so that
    F6 still sees 120 features.

    With the paper's options the trainable parameters are C1 156, S2 12, C3 1,516, S4 32,
    C5 48,120 and F6 10,164 (60,000; the 840 RBF prototypes are fixed).
    """

    min_input_size: int = 32

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        activation: str = "scaled_tanh",
        pooling: str = "subsample",
        partial_c3: bool = True,
        output: str = "rbf",
        pad_input: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: choose one of {sorted(ACTIVATIONS)}")
        if pooling not in ("subsample", "avg", "max"):
            raise ValueError(f"pooling={pooling!r}: choose subsample, avg or max")
        if output not in ("rbf", "linear"):
            raise ValueError(f"output={output!r}: choose rbf or linear")
        act = ACTIVATIONS[activation]
        self.pad_input = pad_input

        def s_layer(channels: int) -> nn.Module:
            if pooling == "subsample":
                return nn.Sequential(Subsampling(channels), act())
            return nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2)

        c3 = PartialConv2d(6, C3_TABLE, 5) if partial_c3 else nn.Conv2d(6, 16, 5)
        self.c1 = nn.Sequential(nn.Conv2d(in_chans, 6, 5), act())
        self.s2 = s_layer(6)
        self.c3 = nn.Sequential(c3, act())
        self.s4 = s_layer(16)
        self.c5 = nn.Sequential(nn.Conv2d(16, 120, 5), act())
        self.pool = nn.AdaptiveAvgPool2d(1)
        # 84 units: the RBF prototypes of the paper were 7x12 bitmaps.
        self.f6 = nn.Sequential(nn.Linear(120, 84), act())
        self.output = RBFOutput(84, num_classes) if output == "rbf" else nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_input:
            dh, dw = max(0, 32 - x.shape[-2]), max(0, 32 - x.shape[-1])
            # Replicating the border pads with the background, whatever the normalisation
            # made of it; zeros would frame the image.
            x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")
        x = self.c5(self.s4(self.c3(self.s2(self.c1(x)))))
        return self.output(self.f6(torch.flatten(self.pool(x), 1)))
