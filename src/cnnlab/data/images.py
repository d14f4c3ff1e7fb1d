"""Decoding image files to uint8 tensors, and the geometry that turns a decoded image of any size
into the model's square input: ImageNet-style crops of the full image (the training crop of
Szegedy et al., 2015, section 6; the evaluation resize and centre crop of torchvision's and timm's
references) or a squash of the whole image to a square for small-image sets."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2 import functional as TF

from cnnlab.errors import CnnlabError

RESIZE = ("crop", "squash")
# What libjpeg-turbo and libpng read through torchvision.io, 1.2-1.3x faster than PIL for a
# 400x300 JPEG on this machine (scripts/bench/data_decode.py); anything else goes through PIL.
TORCHVISION_FORMATS = (b"\xff\xd8", b"\x89PNG")
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, RuntimeError)


def convert(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` ("L" or "RGB"), whatever it was stored as: 16- and 32-bit grey levels
    are scaled to 8 bits (PIL's own conversion clips them), palette and alpha images are
    flattened."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array / top * 255 + 0.5, 0, 255).astype(np.uint8))
    elif img.mode == "P":
        img = img.convert("RGBA")
    return img.convert(mode)


def decode(data: bytes, channels: int, draft: int | None = None) -> torch.Tensor:
    """The image file ``data`` as uint8 (channels, H, W) at its stored size, or for a JPEG and
    ``draft`` at the smallest of 1/2, 1/4 or 1/8 of it whose sides are both at least ``draft``
    (libjpeg scales while decoding: several times faster, for images that are shrunk anyway).
    Raises one of ``DECODE_ERRORS`` for a file that is damaged or no image."""
    if draft is None and bytes(data[:4]).startswith(TORCHVISION_FORMATS):
        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except RuntimeError:
            image = None  # PIL gives the verdict, and a readable reason
        if image is not None and image.dtype == torch.uint8:
            return image
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # PIL's own message names an in-memory buffer, not the file.
        raise UnidentifiedImageError("not an image in any format PIL knows") from None
    with img:
        mode = "L" if channels == 1 else "RGB"
        if draft is not None and img.format == "JPEG":
            img.draft(mode, (draft, draft))
        return pil_to_tensor(convert(img, mode))


def check_geometry(resize: str, crop_pct: float) -> None:
    """The data options of :class:`Geometry`, checked where a data module takes them."""
    if resize not in RESIZE:
        raise CnnlabError(
            f"data.resize={resize!r}: expected crop (random crops of the full image for "
            "training, resize and centre crop for evaluation) or squash (the whole image "
            "resized to a square)."
        )
    if not 0 < crop_pct <= 1:
        raise CnnlabError(f"data.crop_pct={crop_pct}: expected a fraction in (0, 1].")


class Geometry:
    """uint8 (C, H, W) of any size to (C, size, size). ``resize=crop``: for training a random
    window of ``scale`` of the area and aspect ratio in ``ratio`` of the full decoded image,
    resized to ``size`` and mirrored with probability 1/2 (``hflip``); for evaluation the short
    side resized to ``size / crop_pct`` and the centre ``size`` x ``size`` kept.
    ``resize=squash``: the whole image resized to a square, training or not (augmentations then
    work on that square)."""

    def __init__(
        self,
        size: int,
        resize: str = "crop",
        train: bool = False,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        crop_pct: float = 0.875,
        hflip: bool = True,
    ) -> None:
        self.size, self.resize, self.train = size, resize, train
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.crop_pct, self.hflip = crop_pct, hflip

    @property
    def shortest(self) -> int:
        """The smallest side a decoded image may have without losing detail in evaluation."""
        return self.size if self.resize == "squash" else math.floor(self.size / self.crop_pct)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        square = [self.size, self.size]
        if self.resize == "squash":
            return TF.resize(image, square, antialias=True)
        if self.train:
            top, left, h, w = RandomResizedCrop.get_params(image, self.scale, self.ratio)
            image = TF.resized_crop(image, top, left, h, w, square, antialias=True)
            return image.flip(-1) if self.hflip and torch.rand(()) < 0.5 else image
        return TF.center_crop(TF.resize(image, [self.shortest], antialias=True), square)
