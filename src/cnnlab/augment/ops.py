"""Batched augmentations: each draws its random parameters per image and transforms a whole float
batch (N, C, H, W) in [0, 1] with a few tensor operations, on whatever device holds it.

Geometric ones build one affine matrix (or displacement field) per image and resample the batch
once with ``grid_sample``; colour ones are per-image scalars broadcast over the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample ``x`` through per-image affine maps ``theta`` (N, 2, 3) from output to input
    coordinates (normalised to [-1, 1]); outside the image is black (``padding="zeros"``) or
    its edge pixels (``"border"``: crops, whose windows stay inside but reach the last
    half-pixel, where zeros would darken the edges)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _crop_theta(scale_x, scale_y, centre_x, centre_y) -> torch.Tensor:
    """Affine maps that show the window of half-extent ``scale`` around ``centre`` (all in
    normalised coordinates) as the whole output."""
    zero = torch.zeros_like(scale_x)
    row0 = torch.stack([scale_x, zero, centre_x], 1)
    row1 = torch.stack([zero, scale_y, centre_y], 1)
    return torch.stack([row0, row1], 1)


class RandomResizedCrop(nn.Module):
    """Inception-style crop (Szegedy et al., 2015, section 6): a window of ``scale`` of the
    image's area and aspect ratio in ``ratio`` (log-uniform), resized to the full image size."""

    def __init__(
        self, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (0.75, 4 / 3)
    ) -> None:
        super().__init__()
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = len(x), x.device
        area = _uniform(n, *self.scale, dev)
        log_ratio = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), dev)
        aspect = log_ratio.exp()
        # Half-extents in normalised units (the whole image is 1); windows wider than the image
        # are clamped, as torchvision falls back to a smaller crop.
        sx = (area * aspect).sqrt().clamp(max=1.0)
        sy = (area / aspect).sqrt().clamp(max=1.0)
        cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - sx)
        cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - sy)
        return _warp(x, _crop_theta(sx, sy, cx, cy), "border")


class ScaleJitter(nn.Module):
    """VGG's scale jittering (Simonyan and Zisserman, 2015, section 3.1): the image is rescaled so
    that its smaller side is S, an integer drawn uniformly per image from [min_scale, max_scale]
    times the crop size (the paper: S in 256-512 for 224 crops, 1.14-2.29), and a random crop of
    the crop size is taken. min_scale = max_scale is single-scale training, and AlexNet's "random
    224 crops of the 256 image" (1.14)."""

    def __init__(self, min_scale: float = 256 / 224, max_scale: float = 512 / 224) -> None:
        super().__init__()
        if not 1.0 <= min_scale <= max_scale:
            raise ValueError(f"expected 1 <= min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def draw_sizes(self, n: int, side: int, device=None) -> torch.Tensor:
        """S for ``n`` images whose crops are ``side`` pixels: integers uniform in the range."""
        low, high = round(side * self.min_scale), round(side * self.max_scale)
        return torch.randint(low, high + 1, (n,), device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, side = len(x), min(x.shape[-2:])
        visible = side / self.draw_sizes(n, side, x.device).to(x.dtype)
        cx = (torch.rand(n, device=x.device) * 2 - 1) * (1 - visible)
        cy = (torch.rand(n, device=x.device) * 2 - 1) * (1 - visible)
        return _warp(x, _crop_theta(visible, visible, cx, cy), "border")


class RandomAffine(nn.Module):
    """Rotation by up to ``degrees``, shear by up to ``shear`` degrees, zoom in ``scale`` and
    translation by up to ``translate`` of the size, drawn per image; one resampling for all."""

    def __init__(
        self,
        degrees: float = 15.0,
        shear: float = 0.0,
        scale: Sequence[float] = (1.0, 1.0),
        translate: float = 0.0,
    ) -> None:
        super().__init__()
        self.degrees, self.shear, self.scale, self.translate = degrees, shear, scale, translate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = len(x), x.device
        angle = _uniform(n, -self.degrees, self.degrees, dev).deg2rad()
        shear = _uniform(n, -self.shear, self.shear, dev).deg2rad().tan()
        zoom = 1 / _uniform(n, self.scale[0], self.scale[1], dev)
        cos, sin = angle.cos() * zoom, angle.sin() * zoom
        # rotation @ shear along x, mapping output to input coordinates
        row0 = torch.stack(
            [cos, cos * shear - sin, _uniform(n, -1, 1, dev) * self.translate * 2], 1
        )
        row1 = torch.stack(
            [sin, sin * shear + cos, _uniform(n, -1, 1, dev) * self.translate * 2], 1
        )
        return _warp(x, torch.stack([row0, row1], 1))


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels (N, 2 * radius + 1), one per sigma."""
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (taps[None] / sigma[:, None]).square())
    return k / k.sum(1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own sigma (one grouped convolution per
    axis: each image's channels are a group that shares its kernel)."""
    n, c, h, w = x.shape
    k = _gaussian_kernels(sigma, radius).repeat_interleave(c, 0)  # (N*C, taps)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :],
                 groups=n * c)  # fmt: skip
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None],
                 groups=n * c)  # fmt: skip
    return y.reshape(n, c, h, w)


class GaussianBlur(nn.Module):
    """Blur with a Gaussian of standard deviation uniform in ``sigma`` (pixels), with
    probability ``p`` per image."""

    def __init__(self, sigma: Sequence[float] = (0.1, 1.5), p: float = 0.5) -> None:
        super().__init__()
        self.sigma, self.p = tuple(sigma), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        sigma = _uniform(n, *self.sigma, x.device)
        radius = max(1, math.ceil(3 * self.sigma[1]))
        radius = min(radius, min(x.shape[-2:]) - 1)  # reflect padding needs a smaller pad
        blurred = _blur(x, sigma, radius)
        keep = torch.rand(n, 1, 1, 1, device=x.device) >= self.p
        return torch.where(keep, x, blurred)


class ElasticWarp(nn.Module):
    """Local warping (Simard et al., 2003): a random displacement field, smoothed by a Gaussian
    of ``sigma`` pixels and scaled to ``alpha`` pixels, moves every pixel differently."""

    def __init__(self, alpha: float = 8.0, sigma: float = 3.0) -> None:
        super().__init__()
        self.alpha, self.sigma = alpha, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        noise = torch.rand(n, 2, h, w, device=x.device, dtype=x.dtype) * 2 - 1
        radius = min(max(1, math.ceil(3 * self.sigma)), min(h, w) - 1)
        field = _blur(noise, torch.full((n,), self.sigma, device=x.device, dtype=x.dtype), radius)
        # Smoothing shrinks the noise; rescale so that alpha is the typical largest shift.
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        pixels = torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype)
        shift = field.permute(0, 2, 3, 1) * self.alpha * pixels
        theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(n, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False) + shift
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights[None, :, None, None]).sum(1, keepdim=True)


class ColorJitter(nn.Module):
    """Per-image brightness, contrast and saturation factors uniform in [1 - v, 1 + v], and a
    colour shift: a per-image, per-channel offset uniform in [-shift, shift]."""

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        shift: float = 0.0,
    ) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.shift = saturation, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]

        def factor(v: float) -> torch.Tensor:
            return _uniform(n, 1 - v, 1 + v, x.device).view(n, 1, 1, 1)

        x = x * factor(self.brightness)
        mean = _grey(x).mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factor(self.contrast) + mean
        if c == 3:
            grey = _grey(x)
            x = (x - grey) * factor(self.saturation) + grey
        if self.shift:
            x = x + torch.empty(n, c, 1, 1, device=x.device).uniform_(-self.shift, self.shift)
        return x.clamp(0, 1)


class PCAColor(nn.Module):
    """AlexNet's colour augmentation (Krizhevsky et al., 2012, section 4.1): add
    ``[p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T`` to every pixel, where p_i, l_i are the eigenvectors
    and eigenvalues of the training set's RGB covariance and a_i ~ N(0, ``std``) per image.

    The eigen-decomposition is computed once, by :meth:`fit` on a sample of the training images,
    and kept in (non-persistent) buffers: a checkpoint does not need it to predict.
    """

    def __init__(self, std: float = 0.1, sample: int = 10_000) -> None:
        super().__init__()
        self.std, self.sample = std, sample
        self.register_buffer("eigenvalues", torch.zeros(0), persistent=False)
        self.register_buffer("eigenvectors", torch.zeros(0, 0), persistent=False)

    def fit(self, images: torch.Tensor) -> None:
        """Eigen-decomposition of the pixel covariance of uint8 or [0, 1] images (N, C, H, W)."""
        x = images.double() / (255 if images.dtype == torch.uint8 else 1)
        pixels = x.transpose(0, 1).flatten(1)
        values, vectors = torch.linalg.eigh(torch.atleast_2d(torch.cov(pixels)))
        device = self.eigenvalues.device
        self.eigenvalues = values.clamp_min(0).float().to(device)
        self.eigenvectors = vectors.float().to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eigenvalues.numel() == 0:
            raise RuntimeError("PCAColor.fit() was not called on the training images")
        c = len(self.eigenvalues)
        alpha = torch.randn(len(x), c, device=x.device) * self.std
        offset = (alpha * self.eigenvalues) @ self.eigenvectors.T  # (N, C)
        if x.shape[1] != c:  # statistics of grey images, model fed 3 copies: one shift for all
            offset = offset.mean(1, keepdim=True)
        return (x + offset[:, :, None, None].to(x.dtype)).clamp(0, 1)


class RandomErasing(nn.Module):
    """Random erasing (Zhong et al., 2020) / cutout (DeVries and Taylor, 2017): with probability
    ``p`` a rectangle of ``scale`` of the area and aspect ``ratio`` is set to ``value`` (a number,
    or "random" for noise)."""

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float | str = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(value, str) and value != "random":
            raise ValueError(f"value={value!r}: expected a number or 'random'")
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        area = _uniform(n, *self.scale, dev) * h * w
        aspect = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), dev).exp()
        eh = (area / aspect).sqrt().round().clamp(1, h)
        ew = (area * aspect).sqrt().round().clamp(1, w)
        top = (torch.rand(n, device=dev) * (h - eh + 1)).floor()
        left = (torch.rand(n, device=dev) * (w - ew + 1)).floor()
        rows = torch.arange(h, device=dev)[None, :, None]
        cols = torch.arange(w, device=dev)[None, None, :]
        inside = (
            (rows >= top[:, None, None])
            & (rows < (top + eh)[:, None, None])
            & (cols >= left[:, None, None])
            & (cols < (left + ew)[:, None, None])
        )
        inside &= (torch.rand(n, device=dev) < self.p)[:, None, None]
        fill = torch.rand_like(x) if self.value == "random" else torch.full_like(x, self.value)
        return torch.where(inside[:, None], fill, x)
