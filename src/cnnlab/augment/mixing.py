"""Batch-level augmentations that mix pairs of images and their labels: mixup (Zhang et al.,
2018) and CutMix (Yun et al., 2019). They return soft targets (N, num_classes) that sum to 1;
``F.cross_entropy`` with probability targets is then the matching loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (N,) as one-hot rows; soft targets (N, K) as they are."""
    return y if y.ndim == 2 else F.one_hot(y, num_classes).float()


class _Mix(nn.Module):
    """Shared part: with probability ``p`` per batch, draw lambda ~ Beta(alpha, alpha) and a
    partner for each image (a random permutation of the batch)."""

    def __init__(self, num_classes: int, alpha: float = 1.0, p: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.alpha, self.p = num_classes, alpha, p

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = soft_targets(y, self.num_classes)
        if torch.rand(()) >= self.p:
            return x, y
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        perm = torch.randperm(len(x), device=x.device)
        x, lam = self.mix(x, x[perm], lam)
        return x, lam * y + (1 - lam) * y[perm]

    def mix(self, x: torch.Tensor, other: torch.Tensor, lam: float):
        raise NotImplementedError


class MixUp(_Mix):
    """Convex combinations of image pairs: lam * x + (1 - lam) * x', and of their labels."""

    def mix(self, x, other, lam):
        return lam * x + (1 - lam) * other, lam


class CutMix(_Mix):
    """A box of area (1 - lam) cut from the partner image; labels weighted by the areas (lam is
    recomputed from the box as clipped to the image)."""

    def mix(self, x, other, lam):
        h, w = x.shape[-2:]
        cut = (1 - lam) ** 0.5
        bh, bw = round(h * cut), round(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
        left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = other[..., top:bottom, left:right]
        return x, 1 - (bottom - top) * (right - left) / (h * w)
