"""Decoding image files to uint8 tensors, and the geometry that turns a decoded image of any size
into the model's square input: ImageNet-style crops of the full image (the training crop of
Szegedy et al., 2015, section 6; the evaluation resize and centre crop of torchvision's and timm's
references) or a squash of the whole image to a square for small-image sets."""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2 import functional as TF

from cnnlab.errors import CnnlabError

RESIZE = ("crop", "squash")
DECODE = ("cpu", "gpu")
JPEG = b"\xff\xd8"
# What libjpeg-turbo and libpng read through torchvision.io, 1.2-1.3x faster than PIL for a
# 400x300 JPEG on this machine (scripts/bench/data_decode.py); anything else goes through PIL.
TORCHVISION_FORMATS = (JPEG, b"\x89PNG")
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


class Crop(NamedTuple):
    """The random part of one training crop: the window of the full image and the mirror."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


class Geometry:
    """uint8 (C, H, W) of any size to (C, size, size). ``resize=crop``: for training a random
    window of ``scale`` of the area and aspect ratio in ``ratio`` of the full decoded image,
    resized to ``size`` and mirrored with probability 1/2 (``hflip``); for evaluation the short
    side resized to ``size / crop_pct`` and the centre ``size`` x ``size`` kept.
    ``resize=squash``: the whole image resized to a square, training or not (augmentations then
    work on that square). :meth:`draw` and :meth:`apply` split a call in its random and its
    pixel part, for images decoded after the crop is drawn (``data.decode=gpu``)."""

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

    def draw(self, height: int, width: int) -> Crop | None:
        """The random crop of a ``height`` x ``width`` image, from torch's generator; None where
        the geometry draws nothing (evaluation, squash)."""
        if self.resize == "squash" or not self.train:
            return None
        # get_params reads the image's size only: an empty tensor of that size stands in for it.
        window = RandomResizedCrop.get_params(torch.empty(0, height, width), self.scale,
                                              self.ratio)  # fmt: skip
        return Crop(*window, flip=self.hflip and bool(torch.rand(()) < 0.5))

    def apply(self, image: torch.Tensor, crop: Crop | None) -> torch.Tensor:
        """``image`` (on any device) cut by ``crop`` (from :meth:`draw`) and resized."""
        square = [self.size, self.size]
        if crop is not None:
            top, left, h, w, flip = crop
            image = TF.resized_crop(image, top, left, h, w, square, antialias=True)
            return image.flip(-1) if flip else image
        if self.resize == "squash":
            return TF.resize(image, square, antialias=True)
        return TF.center_crop(TF.resize(image, [self.shortest], antialias=True), square)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, self.draw(*image.shape[-2:]))


def check_decode(decode: str) -> None:
    """``data.decode``, checked where a data module takes it: gpu needs a CUDA device."""
    if decode not in DECODE:
        raise CnnlabError(
            f"data.decode={decode!r}: expected cpu (the DataLoader's workers decode and crop "
            "each image) or gpu (the workers read the JPEG files' bytes only; each batch is "
            "decoded and cropped on the CUDA device in one call)."
        )
    if decode == "gpu" and not torch.cuda.is_available():
        raise CnnlabError(
            "data.decode=gpu decodes batches of JPEGs on a CUDA device, and this machine has "
            "none (torch.cuda.is_available() is False): use data.decode=cpu (the default), "
            "which decodes in the DataLoader's workers, or run on a machine with an NVIDIA GPU."
        )


def encode(data: bytes, channels: int, geometry: Geometry) -> tuple[bytes | torch.Tensor,
                                                                    Crop | None]:  # fmt: skip
    """One image as a DataLoader worker hands it on with ``data.decode=gpu``: a JPEG in L or RGB
    as its bytes and the crop :class:`Geometry` draws for it, its size read from the header
    alone; any other image decoded and cropped here (a tensor, no crop). Raises one of
    ``DECODE_ERRORS`` for a file whose header is damaged or no image. (Bytes, not tensors: a
    worker sends each tensor through a file descriptor of its own, and a batch of hundreds of
    them in flight exhausts the process's limit.)"""
    if bytes(data[:2]) == JPEG:
        try:
            header = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnidentifiedImageError("not an image in any format PIL knows") from None
        # CMYK and YCCK JPEGs are left to PIL, which converts them to RGB.
        if header.mode in ("L", "RGB"):
            width, height = header.size
            return bytes(data), geometry.draw(height, width)
    return geometry(decode(data, channels)), None


def decode_jpegs(files: list[bytes], channels: int, device) -> list[torch.Tensor | str]:
    """JPEG files decoded on ``device``: in one batched call (nvJPEG on a GPU), or, if that
    fails, one by one, with PIL on the CPU for any the device's decoder rejects; the reason (a
    string) in place of an image that no decoder reads."""
    if not files:
        return []
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    # The decoders take the bytes on the CPU, whatever the device.
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    try:
        return list(decode_jpeg(tensors, mode=mode, device=device))
    except RuntimeError:
        pass  # one damaged file fails the whole call: find it
    decoded = []
    for data, tensor in zip(files, tensors, strict=True):
        try:
            decoded.append(decode_jpeg(tensor, mode=mode, device=device))
        except RuntimeError:
            try:
                decoded.append(decode(data, channels).to(device))
            except DECODE_ERRORS as e:
                decoded.append(f"{type(e).__name__}: {e}".splitlines()[0])
    return decoded


class EncodedBatch:
    """A batch as the DataLoader's workers hand it on with ``data.decode=gpu``: per image what
    :func:`encode` made of it (bytes and crop, or the finished image), with its file's name.
    (Not a dataclass: Lightning's input conversions walk into dataclasses and copy them.)"""

    def __init__(self, images: list[bytes | torch.Tensor], crops: list[Crop | None],
                 names: list[str], geometry: Geometry, channels: int) -> None:  # fmt: skip
        self.images, self.crops, self.names = images, crops, names
        self.geometry, self.channels = geometry, channels

    @classmethod
    def join(cls, batches: list[EncodedBatch]) -> EncodedBatch:
        """One batch of the images of ``batches`` (of one geometry), in order."""
        first = batches[0]
        return cls([x for b in batches for x in b.images], [c for b in batches for c in b.crops],
                   [n for b in batches for n in b.names], first.geometry,
                   first.channels)  # fmt: skip

    def decode(self, device) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
        """(the images decoded and cropped on ``device``, uint8 (N, C, size, size); for each the
        position in the batch it comes from; (name, reason) of each JPEG no decoder read).
        An unreadable image's place is taken by the next readable one of the batch, so that
        the batch keeps its size (as the workers do with files unreadable from the start)."""
        at = [i for i, image in enumerate(self.images) if isinstance(image, bytes)]
        decoded = dict(zip(at, decode_jpegs([self.images[i] for i in at], self.channels,
                                            device), strict=True))  # fmt: skip
        out: list[torch.Tensor | None] = []
        for i, image in enumerate(self.images):
            if i not in decoded:  # finished in the worker
                out.append(image.to(device))
            elif isinstance(decoded[i], str):
                out.append(None)
            else:
                out.append(self.geometry.apply(decoded[i], self.crops[i]))
        skipped = [(self.names[i], why) for i, why in decoded.items() if isinstance(why, str)]
        readable = [i for i, image in enumerate(out) if image is not None]
        if not readable:
            raise CnnlabError(
                f"No image of a batch of {len(out)} can be decoded (the first: "
                f"{skipped[0][0]}, {skipped[0][1]}). Check the data."
            )
        source = [i if out[i] is not None else next((j for j in readable if j > i), readable[0])
                  for i in range(len(out))]  # fmt: skip
        return torch.stack([out[i] for i in source]), source, skipped
