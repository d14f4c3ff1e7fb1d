"""Test-time augmentation: the model's class probabilities averaged over several views of each
test image (AlexNet's ten crops, Krizhevsky et al., 2012, section 4.1; VGG's multi-scale
evaluation, Simonyan and Zisserman, 2015, section 3.2).

One vocabulary, :class:`cnnlab.config.schema.TTAMode`, for training's ``eval.tta``,
``cnnlab-eval``, ``cnnlab-predict`` and ``cnnlab-ensemble``, and one averaging (of softmax
probabilities), so that a trained run's ``test_acc_tta`` is what ``cnnlab-eval`` reports for it.

Views keep the model's input size (a crop is resized back up, a larger scale is centre-cropped),
so that models with a fixed input size (a dense head) take them too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from cnnlab.config.schema import TTAMode
from cnnlab.errors import CnnlabError

# cnnlab-eval's and cnnlab-predict's name for hflip before the modes were one vocabulary.
ALIASES = {"flip": TTAMode.hflip}
CHOICES = (*(m.value for m in TTAMode), *ALIASES)
CROP_FRACTION = 0.875  # 224 of 256, AlexNet's crop
SCALES = (1.0, 1.15, 1.3)  # sizes relative to the trained one (VGG: Q = S - 32, S, S + 32)


def tta_mode(value: str | TTAMode, where: str = "eval.tta") -> TTAMode:
    """The mode ``value`` names (``flip`` is ``hflip``); ``where`` names the setting in the
    error for anything else."""
    if isinstance(value, TTAMode):
        return value
    if value in ALIASES:
        return ALIASES[value]
    try:
        return TTAMode(value)
    except ValueError:
        raise CnnlabError(
            f"{where}={value!r} is not a test-time augmentation: expected one of "
            f"{', '.join(m.value for m in TTAMode)} (flip stands for hflip)."
        ) from None


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def views(x: torch.Tensor, mode: str | TTAMode) -> list[torch.Tensor]:
    """The views of a batch (N, C, H, W) that ``mode`` averages over, each (N, C, H, W)."""
    mode = tta_mode(mode)
    size = tuple(x.shape[-2:])
    crop = [max(1, round(s * CROP_FRACTION)) for s in size]
    if mode is TTAMode.none:
        return [x]
    if mode is TTAMode.hflip:
        return [x, x.flip(-1)]
    if mode in (TTAMode.five_crop, TTAMode.ten_crop):
        crops = TF.five_crop(x, crop) if mode is TTAMode.five_crop else TF.ten_crop(x, crop)
        return [_resize(c, size) for c in crops]
    scaled = [_resize(x, [round(s * k) for s in size]) for k in SCALES]  # multiscale
    return [TF.center_crop(v, list(size)) for v in scaled]


@torch.no_grad()
def tta_probs(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str | TTAMode
) -> torch.Tensor:
    """Softmax probabilities averaged over the views of ``x``."""
    probs = [model(v).float().softmax(-1) for v in views(x, mode)]
    return torch.stack(probs).mean(0)
