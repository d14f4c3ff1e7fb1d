"""Progressive resizing: training images smaller in the first epochs, full size at the end.

Small images make early steps cheap while the network learns coarse features, and the last
epochs at the full size let BatchNorm and the head settle at the resolution the network is
evaluated at (FFCV's ImageNet recipes ramp 160 to 192 px this way; Touvron et al. 2019,
"Fixing the train-test resolution discrepancy", explain why the end must match the test size).
The size depends on the epoch alone, so a resumed run trains the very images of an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class ResolutionRamp:
    """``min_size`` px up to epoch ``start_epoch``, then a linear ramp to ``max_size`` (the data's
    image size) at ``end_epoch`` and after; sizes are rounded down to a multiple of ``multiple``
    (FFCV's ``start_ramp``, ``end_ramp`` and rounding to 32 px, here at small-image scale)."""

    min_size: int
    max_size: int
    start_epoch: int = 0
    end_epoch: int = 1
    multiple: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.min_size <= self.max_size:
            raise CnnlabError(
                f"module.progressive_resize.min_size={self.min_size}: expected a size from 1 to "
                f"the image size ({self.max_size} px), which the last epochs train at."
            )
        if not 0 <= self.start_epoch < self.end_epoch:
            raise CnnlabError(
                f"module.progressive_resize: start_epoch={self.start_epoch} and end_epoch="
                f"{self.end_epoch}: expected 0 <= start_epoch < end_epoch (the ramp from "
                "min_size to the full size runs between them)."
            )
        if self.multiple < 1:
            raise CnnlabError(
                f"module.progressive_resize.multiple={self.multiple}: expected a positive number "
                "of pixels that the sizes are rounded to."
            )

    @classmethod
    def of(cls, options: Mapping, image_size: int) -> ResolutionRamp:
        """The ramp of ``module.progressive_resize`` for images of ``image_size`` px."""
        names = [f.name for f in fields(cls) if f.name != "max_size"]
        unknown = sorted(set(options) - set(names))
        if unknown or not {"min_size", "end_epoch"} <= set(options):
            raise CnnlabError(
                f"module.progressive_resize={dict(options)}: expected min_size and end_epoch, "
                f"optionally start_epoch and multiple (accepted keys: {', '.join(names)})."
            )
        return cls(max_size=image_size, **options)

    def size(self, epoch: int) -> int:
        if epoch >= self.end_epoch:
            return self.max_size
        t = max(0, epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        size = self.min_size + t * (self.max_size - self.min_size)
        return max(self.min_size, int(size) // self.multiple * self.multiple)

    def __call__(self, x: torch.Tensor, epoch: int) -> torch.Tensor:
        """The float batch ``x`` at this epoch's size (antialiased, as Preprocess resizes)."""
        size = self.size(epoch)
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
