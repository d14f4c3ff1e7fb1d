"""Batched preprocessing and augmentation on the training device.

Data modules hand over uint8 batches; everything here works on whole (N, C, H, W) batches, so a
GPU does the work in a few kernels and a CPU avoids per-image Python calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Preprocess(nn.Module):
    """uint8 images to normalised float: channel count and size adjusted to what the model takes.

    ``mean`` and ``std`` are buffers, so a checkpoint carries the statistics it was trained with.
    """

    def __init__(self, channels: int, image_size: int) -> None:
        super().__init__()
        self.channels, self.image_size = channels, image_size
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean_t, std_t = torch.as_tensor(mean), torch.as_tensor(std)
        if len(mean_t) == 1 and self.channels > 1:
            mean_t, std_t = mean_t.repeat(self.channels), std_t.repeat(self.channels)
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)

    def to_unit_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) to float in [0, 1] with the model's channels and size."""
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_unit_float(x))


class RandomCropFlip(nn.Module):
    """Random crop of the zero-padded image (a translation by up to ``padding`` pixels) and a
    horizontal flip with probability 1/2, drawn independently per image: the standard CIFAR
    augmentation of He et al. (2016, section 4.2)."""

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        super().__init__()
        self.padding, self.flip = padding, flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
            dx = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
            rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chans = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[batch, chans, rows, cols]
        if self.flip:
            mask = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
            x = torch.where(mask, x.flip(3), x)
        return x
