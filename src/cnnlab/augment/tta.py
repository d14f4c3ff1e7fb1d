"""Test-time augmentation: the model's class probabilities averaged over several views of each
test image (AlexNet's ten crops, Krizhevsky et al., 2012, section 4.1; VGG's multi-scale
evaluation, Simonyan and Zisserman, 2015, section 3.2).

Views keep the model's input size (a crop is resized back up, a larger scale is centre-cropped),
so that models with a fixed input size (a dense head) take them too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

TTA_MODES = ("none", "hflip", "five_crop", "ten_crop", "multiscale")
CROP_FRACTION = 0.875  # 224 of 256, AlexNet's crop
SCALES = (1.0, 1.15, 1.3)  # sizes relative to the trained one (VGG: Q = S - 32, S, S + 32)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a batch (N, C, H, W) that ``mode`` averages over, each (N, C, H, W)."""
    size = tuple(x.shape[-2:])
    crop = [max(1, round(s * CROP_FRACTION)) for s in size]
    if mode == "none":
        return [x]
    if mode == "hflip":
        return [x, x.flip(-1)]
    if mode in ("five_crop", "ten_crop"):
        crops = TF.five_crop(x, crop) if mode == "five_crop" else TF.ten_crop(x, crop)
        return [_resize(c, size) for c in crops]
    if mode == "multiscale":
        scaled = [_resize(x, [round(s * k) for s in size]) for k in SCALES]
        return [TF.center_crop(v, list(size)) for v in scaled]
    raise ValueError(f"unknown TTA mode {mode!r}; expected one of {', '.join(TTA_MODES)}")


@torch.no_grad()
def tta_probs(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str):
    """Softmax probabilities averaged over the views of ``x``."""
    probs = [model(v).float().softmax(-1) for v in views(x, mode)]
    return torch.stack(probs).mean(0)
