"""Augmentations on real Fashion-MNIST images: shapes, ranges, seeds, and what each one claims."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.augment.mixing import CutMix, MixUp
from cnnlab.augment.ops import PCAColor, ScaleJitter
from cnnlab.augment.pipeline import Albumentations, Augmentation, PerSample, RandomCropFlip
from cnnlab.augment.tta import tta_probs, views
from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.errors import CnnlabError
from conftest import CONF, needs_fmnist

AUGMENTATIONS = sorted(p.stem for p in (CONF / "augmentation").glob("*.yaml"))


@pytest.fixture(scope="module")
def fmnist():
    dm = FashionMNIST(root=None, download=False, samples_per_class=30, seed=0)
    dm.setup()
    return dm


def colour_batch(dm, n: int = 48) -> torch.Tensor:
    """Real colour images: three different Fashion-MNIST images as the R, G and B planes."""
    grey = dm.train_set.images[: 3 * n].float().div(255)
    return torch.cat([grey[:n], grey[n : 2 * n], grey[2 * n :]], 1)


def build(name: str, num_classes: int = 10) -> Augmentation:
    cfg = OmegaConf.load(CONF / "augmentation" / f"{name}.yaml")
    cfg = cfg.augmentation if "augmentation" in cfg else cfg
    root = OmegaConf.create({"data": {"num_classes": num_classes}, "seed": 0, "aug": cfg})
    return instantiate(root.aug)


@needs_fmnist
@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_keeps_shape_range_and_is_seeded(name, fmnist):
    aug = build(name)
    aug.prepare(fmnist)
    x, y = colour_batch(fmnist, 16), fmnist.train_set.labels[:16]
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(aug(x.clone(), y))
    (out, target), (again, target_again) = outs
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, again) and torch.equal(target, target_again)
    if name == "none":
        assert torch.equal(out, x) and torch.equal(target, y)
    else:
        assert (out - x).abs().mean() > 1e-3  # it does change the images
    if name in ("mixup", "cutmix"):
        assert target.shape == (16, 10) and torch.allclose(target.sum(1), torch.ones(16))
    else:
        assert torch.equal(target, y)


@needs_fmnist
def test_pca_colour_eigenvectors_match_numpy_and_shift_along_them(fmnist):
    images = colour_batch(fmnist, 100)
    pca = PCAColor(std=0.1)
    pca.fit((images * 255).round().to(torch.uint8))
    pixels = (images * 255).round().numpy().transpose(1, 0, 2, 3).reshape(3, -1) / 255
    values, vectors = np.linalg.eigh(np.cov(pixels))
    assert np.allclose(pca.eigenvalues.numpy(), values, rtol=1e-4, atol=1e-7)
    # Eigenvectors up to sign.
    assert np.allclose(np.abs(pca.eigenvectors.numpy()), np.abs(vectors), atol=1e-4)
    x = torch.full((4, 3, 8, 8), 0.5)
    torch.manual_seed(0)
    out = pca(x)
    torch.manual_seed(0)
    alpha = torch.randn(4, 3) * 0.1
    expected = 0.5 + (alpha * pca.eigenvalues) @ pca.eigenvectors.T
    assert torch.allclose(out[:, :, 3, 3], expected, atol=1e-6)
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))  # one shift per image


def test_scale_jitter_draws_s_across_the_range_and_crops_at_that_scale():
    jitter = ScaleJitter(256 / 224, 512 / 224)
    sizes = jitter.draw_sizes(20_000, 224)
    assert int(sizes.min()) == 256 and int(sizes.max()) == 512
    counts = torch.bincount(sizes - 256)
    assert counts.float().std() / counts.float().mean() < 0.2  # uniform over 257 sizes
    ramp = torch.linspace(0, 1, 56).expand(1, 1, 56, 56).contiguous()
    assert torch.allclose(ScaleJitter(1.0, 1.0)(ramp), ramp, atol=1e-5)  # S = crop: identity
    # At S = 2 x crop the crop sees half of the image: the ramp's slope doubles.
    slope = ScaleJitter(2.0, 2.0)(ramp.expand(8, 1, 56, 56))[..., 20:36].diff(dim=-1)
    assert torch.allclose(slope, torch.full_like(slope, 0.5 / 55), atol=1e-4)


@needs_fmnist
def test_mixup_and_cutmix_targets_and_soft_target_loss(fmnist):
    x, y = colour_batch(fmnist, 32), fmnist.train_set.labels[:32]
    torch.manual_seed(3)
    mixed, target = MixUp(10, alpha=0.4)(x, y)
    torch.manual_seed(3)
    torch.rand(())  # the draw that decides whether to mix (p=1: always)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(32)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(32))
    assert torch.allclose(target[torch.arange(32), y], lam + (1 - lam) * (y[perm] == y), atol=1e-6)
    torch.manual_seed(5)
    cut, target = CutMix(10, alpha=1.0)(x, y)
    torch.manual_seed(5)
    torch.rand(())
    torch.distributions.Beta(1.0, 1.0).sample()
    perm = torch.randperm(32)
    from_partner = ((cut == x[perm]) & (cut != x)).all(1).float().mean(dim=(1, 2))
    pasted = (cut != x).any(1)
    assert pasted.any() and torch.allclose(target.sum(1), torch.ones(32))
    # Each label weight is the share of the image's pixels that came from where the label did.
    own = target[torch.arange(32), y] - (target[torch.arange(32), y[perm]] * (y[perm] == y))
    differs = y[perm] != y
    assert torch.allclose(own[differs] + from_partner[differs], torch.ones(int(differs.sum())),
                          atol=0.15)  # fmt: skip
    logits = torch.randn(32, 10)
    by_hand = -(target * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(F.cross_entropy(logits, target), by_hand, atol=1e-6)


def test_batched_and_per_sample_crop_flip_draw_the_same_distribution():
    image = torch.arange(1, 65, dtype=torch.uint8).reshape(1, 8, 8)  # every pixel distinct
    op, n = RandomCropFlip(padding=2, flip=True), 5000
    torch.manual_seed(0)
    batched = op(image.float().expand(n, 1, 8, 8)).to(torch.uint8)
    per_sample = torch.stack([PerSample([op])(image) for _ in range(n)])
    counts = [Counter(tuple(v.flatten().tolist()) for v in out) for out in (batched, per_sample)]
    assert len(counts[0]) == len(counts[1]) == 5 * 5 * 2  # every offset, flipped or not
    assert counts[0].keys() == counts[1].keys()
    worst = max(abs(counts[0][k] - counts[1][k]) / n for k in counts[0])
    assert worst < 0.015  # each of the 50 outcomes has probability 0.02


def test_flip_augmentation_mirrors_about_half_the_images_and_moves_nothing_else(fmnist):
    x = fmnist.train_set.images[:400].float().div(255)
    torch.manual_seed(0)
    out, _ = build("flip")(x.clone(), fmnist.train_set.labels[:400])
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # no translation, no other change
    assert 0.4 < (~same).float().mean() < 0.6


def test_tta_views_are_what_they_claim_and_average_probabilities():
    x = torch.rand(2, 3, 16, 16)
    ten = views(x, "ten_crop")
    five = views(x, "five_crop")
    assert len(ten) == 10 and len(five) == 5
    # The last five are the mirror images of the first five: the mirror of the top-left crop is
    # the top-right crop of the mirrored image, and so on.
    for plain, mirrored in zip(ten[:5], [ten[i] for i in (6, 5, 8, 7, 9)], strict=True):
        assert torch.allclose(mirrored, plain.flip(-1), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(ten[:5], five, strict=True))
    corner = F.interpolate(x[..., :14, :14], size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(five[0], corner, atol=1e-6)  # top-left crop of 14 = 0.875 x 16
    assert [v.shape for v in views(x, "multiscale")] == [x.shape] * 3
    assert torch.equal(views(x, "multiscale")[0], x)
    hflip = views(x, "hflip")
    assert torch.equal(hflip[1], x.flip(-1))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    expected = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(tta_probs(model, x, "hflip"), expected, atol=1e-6)


def test_bad_augmentation_settings_are_clear_errors():
    with pytest.raises(CnnlabError, match="augmentation.where='gpu'"):
        Augmentation(where="gpu")
    with pytest.raises(CnnlabError, match="no transform 'Flipp'"):
        Albumentations([{"Flipp": {"p": 0.5}}])
