"""Preprocessing and the augmentation pipeline.

Data modules hand over uint8 batches. The pipeline (:class:`Augmentation`, the
``augmentation`` config group) runs its operations either batched on the training device, after
the batch is moved there (whole (N, C, H, W) float batches: a GPU does the work in a few kernels
and a CPU avoids per-image Python calls), or per sample on uint8 images in the DataLoader
(workers), as torchvision's presets do. Batch-level mixing (mixup, CutMix) always runs batched.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from cnnlab.augment.mixing import _Mix
from cnnlab.errors import CnnlabError

WHERE = ("batched", "per_sample")


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
        elif len(mean_t) > 1 and self.channels == 1:
            # RGB weights on grey images (their first convolution's filters summed): a grey
            # image is R = G = B, normalised as well as one channel can be by the averages.
            mean_t, std_t = mean_t.mean(0, keepdim=True), std_t.mean(0, keepdim=True)
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
        # One gather from the padded batch does crop and flip: each output pixel reads the
        # padded pixel at its (shifted, possibly mirrored) position.
        n, c, h, w = x.shape
        p, dev = self.padding, x.device
        padded = F.pad(x, (p, p, p, p)) if p > 0 else x
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1), device=dev)
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1), device=dev)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        if self.flip:
            cols = torch.where(torch.rand(n, 1, 1, device=dev) < 0.5, w - 1 - cols, cols)
        rows = torch.arange(h, device=dev).view(1, h, 1) + dy
        index = (rows * (w + 2 * p) + cols + dx).view(n, 1, h * w).expand(n, c, h * w)
        return padded.flatten(2).gather(2, index).view(n, c, h, w)

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        """The same augmentation on one uint8 image, with torchvision's transforms."""
        return _crop_flip(tuple(image.shape[-2:]), self.padding, self.flip)(image)


@functools.lru_cache(maxsize=16)
def _crop_flip(size: tuple[int, int], padding: int, flip: bool) -> v2.Transform:
    steps = [v2.RandomCrop(size, padding=padding)] if padding > 0 else []
    return v2.Compose([*steps, v2.RandomHorizontalFlip(0.5 if flip else 0.0)])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


class PerImage(nn.Module):
    """Base for augmentations defined on single uint8 images (torchvision's policies,
    Albumentations): batched, they loop over the batch's images."""

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = to_uint8(x)
        return torch.stack([self.per_image(image) for image in images]).to(x.dtype).div_(255)


POLICIES = {
    "randaugment": v2.RandAugment,
    "trivialaugment": v2.TrivialAugmentWide,
    "autoaugment": v2.AutoAugment,
    "augmix": v2.AugMix,
}


class Policy(PerImage):
    """A torchvision automatic augmentation policy by name (RandAugment: Cubuk et al., 2020;
    TrivialAugment: Mueller and Hutter, 2021; AutoAugment: Cubuk et al., 2019 (its ImageNet
    policy); AugMix: Hendrycks et al., 2020) with its keyword arguments."""

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if name not in POLICIES:
            raise CnnlabError(
                f"augmentation policy {name!r} is unknown; choose one of {', '.join(POLICIES)}."
            )
        self.transform = POLICIES[name](**dict(options or {}))

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform(image)


class Albumentations(PerImage):
    """A pipeline of Albumentations transforms (Buslaev et al., 2020) given in YAML as a list of
    ``{TransformName: {argument: value}}``, e.g. ``[{HorizontalFlip: {p: 0.5}}]``. Needs the
    optional extra: ``pip install 'cnnlab[albumentations]'``."""

    def __init__(self, transforms: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        try:
            import albumentations as A
        except ImportError:
            raise CnnlabError(
                "augmentation=albumentations needs the albumentations package: install cnnlab "
                "with its extra (pip install 'cnnlab[albumentations]', or uv sync --all-extras)."
            ) from None
        steps = []
        for item in transforms:
            if not isinstance(item, Mapping) or len(item) != 1:
                raise CnnlabError(
                    f"augmentation transforms entry {item!r}: expected one "
                    "{TransformName: {argument: value}} per list item."
                )
            ((name, kwargs),) = item.items()
            if not hasattr(A, name):
                raise CnnlabError(
                    f"Albumentations has no transform {name!r} (see "
                    "https://explore.albumentations.ai for the names)."
                )
            steps.append(getattr(A, name)(**dict(kwargs or {})))
        self.pipeline = A.Compose(steps)

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        # Albumentations keeps its own random state: drawing its seed from torch's makes runs
        # reproducible with the run's seed, and DataLoader workers differ as torch's streams do.
        self.pipeline.set_random_seed(int(torch.randint(2**31 - 1, ())))
        hwc = image.permute(1, 2, 0).cpu().numpy()
        out = self.pipeline(image=hwc)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        return torch.from_numpy(out).permute(2, 0, 1).contiguous().to(image.device)


class PerSample:
    """The image operations of a pipeline as one per-sample transform for the DataLoader: uint8
    (C, H, W) in and out. Operations with a ``per_image`` form use it; the others run on a
    batch of one."""

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        # Copies on the CPU: the training module (and the originals with it) may move to a GPU,
        # and DataLoader workers must not touch CUDA tensors.
        self.ops = [copy.deepcopy(op).cpu() for op in ops]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            if isinstance(op, (RandomCropFlip, PerImage)):
                image = op.per_image(image)
            else:
                image = to_uint8(op(image[None].float().div_(255)))[0]
        return image


class Augmentation(nn.Module):
    """The training-time augmentation pipeline: ``ops`` applied in order.

    ``where=batched`` runs them on the training device after the batch is moved there;
    ``where=per_sample`` hands them to the data module, which applies them to each image in the
    DataLoader (workers). Mixing operations (mixup, CutMix) need the batch and run batched either
    way; they turn the labels into soft targets. Config files of the group each add named
    operations, so that ``augmentation=[basic,mixup]`` composes them.
    """

    def __init__(self, ops: Mapping[str, nn.Module] | None = None, where: str = "batched") -> None:
        super().__init__()
        if where not in WHERE:
            raise CnnlabError(
                f"augmentation.where={where!r}: expected batched (on the training device, after "
                "the batch is moved there) or per_sample (each image in the DataLoader)."
            )
        self.ops = nn.ModuleDict(dict(ops or {}))
        self.where = where

    def prepare(self, datamodule) -> None:
        """Fit what needs the training images (PCA colour statistics) and, per sample, install
        the image operations in the data module's training set."""
        for op in self.ops.values():
            if hasattr(op, "fit"):
                op.fit(datamodule.sample_images(op.sample))
        if self.where == "per_sample":
            image_ops = [op for op in self.ops.values() if not isinstance(op, _Mix)]
            datamodule.set_train_transform(PerSample(image_ops) if image_ops else None)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for op in self.ops.values():
            if isinstance(op, _Mix):
                if y is not None:
                    x, y = op(x, y)
            elif self.where == "batched":
                x = op(x)
        return x, y


def as_augmentation(augmentation: nn.Module | None) -> Augmentation:
    """Any augmentation module as a pipeline (a bare module becomes its only, batched, step)."""
    if augmentation is None or isinstance(augmentation, nn.Identity):
        return Augmentation()
    if isinstance(augmentation, Augmentation):
        return augmentation
    return Augmentation({"augment": augmentation})


def changes_images(augmentation: nn.Module | None) -> bool:
    """Whether an instantiated ``augmentation`` group alters training images (``none`` is a
    pipeline without operations)."""
    return len(as_augmentation(augmentation).ops) > 0
