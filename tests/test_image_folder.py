"""Image folders at scale: a cached name-only index, unreadable files found where they are read,
ImageNet-style crops of the full image, and the class-balanced sampler."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.base import BalancedSampler
from cnnlab.data.folder_index import cache_file, scan
from cnnlab.data.image_folder import ImageFolder
from cnnlab.data.images import Geometry, decode
from cnnlab.errors import CnnlabError


def photo(seed: int, size=(400, 300)) -> Image.Image:
    """A smooth random colour field with noise: JPEG-compresses like a photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.normal(size=(h // 10 + 1, w // 10 + 1, 3)).cumsum(0).cumsum(1)
    base = (base - base.min()) / (np.ptp(base) + 1e-9) * 255
    img = Image.fromarray(base.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 classes x 12 JPEG photos of 400x300 (one of them 300x400)."""
    root = tmp_path_factory.mktemp("photos")
    for c, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir()
        for i in range(12):
            size = (300, 400) if (c, i) == (0, 0) else (400, 300)
            photo(100 * c + i, size).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_index_is_cached_outside_the_folder_and_follows_changes(photos, tmp_path, caplog):
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    shutil.copytree(photos, tree)
    before = snapshot(tree)
    first = ImageFolder(root=str(tree), num_classes=3, num_workers=0, cache_dir=str(cache))
    first.setup()
    assert snapshot(tree) == before  # nothing written into the user's folder
    index_file = cache_file(cache, tree, ["ant", "bee", "cat"])
    assert index_file.is_file() and index_file.with_suffix(".stats.json").is_file()
    with caplog.at_level(logging.INFO):
        second = ImageFolder(root=str(tree), num_classes=3, num_workers=0, cache_dir=str(cache))
        second.setup()
    assert "from the cache" in caplog.text
    assert [s.paths for s in (first.train_set, first.val_set, first.test_set)] == [
        s.paths for s in (second.train_set, second.val_set, second.test_set)
    ]
    assert (first.mean, first.std) == (second.mean, second.std)
    # A new file changes its folder's time: the next run lists the tree again.
    shutil.copy(tree / "bee" / "00.jpg", tree / "bee" / "99.jpg")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        third = ImageFolder(root=str(tree), num_classes=3, num_workers=0, cache_dir=str(cache))
        third.setup()
    assert "from the cache" not in caplog.text
    total = len(third.train_set) + len(third.val_set) + len(third.test_set)
    assert total == 37


def test_scan_lists_names_and_sizes_without_decoding(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "deeper").mkdir(parents=True)
    (tmp_path / "a" / "x.jpg").write_bytes(b"12345")
    (tmp_path / "a" / "deeper" / "y.PNG").write_bytes(b"")
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"1")
    (tmp_path / "a" / "notes.txt").write_bytes(b"1")
    (tmp_path / "b" / "z.webp").write_bytes(b"123")
    index = scan(tmp_path, ["a", "b"])
    assert [index[i] for i in range(len(index))] == ["a/deeper/y.PNG", "a/x.jpg", "b/z.webp"]
    assert index.labels.tolist() == [0, 0, 1] and index.sizes.tolist() == [0, 5, 3]
    assert index.bad() == {0: "empty file (0 bytes)"}


def test_unreadable_files_are_replaced_in_their_batch_and_named(photos, tmp_path):
    tree, cache = tmp_path / "tree", str(tmp_path / "cache")
    shutil.copytree(photos, tree)
    options = dict(root=str(tree), num_classes=3, image_size=32, batch_size=6, val_fraction=0,
                   test_fraction=0, num_workers=2, cache_dir=cache)  # fmt: skip
    ImageFolder(**options).setup()  # indexed and statistics cached while the files were whole
    whole = (tree / "ant" / "03.jpg").read_bytes()
    (tree / "ant" / "03.jpg").write_bytes(whole[: len(whole) // 3])
    (tree / "bee" / "05.jpg").write_text("not a jpeg")
    (tree / "cat" / "07.jpg").write_bytes(b"")
    dm = ImageFolder(**options)
    dm.setup()
    assert dm.skipped_files == {}  # set-up reads no image
    batches = list(dm.train_dataloader())
    assert [len(x) for x, _ in batches] == [6] * 6  # full batches: replacements, no gaps
    assert all(x.shape[1:] == (3, 32, 32) and x.dtype == torch.uint8 for x, _ in batches)
    names = {Path(p).name: why for p, why in dm.skipped_files.items()}
    assert set(names) == {"03.jpg", "05.jpg", "07.jpg"}
    assert "not an image" in names["05.jpg"]
    strict = ImageFolder(**{**options, "on_corrupt": "error"})
    strict.setup()
    with pytest.raises(CnnlabError, match=r"cannot be decoded: .*(03|05|07)\.jpg"):
        list(strict.train_dataloader())


def test_training_crops_come_from_the_full_image_and_eval_centre_crops(photos):
    path = photos / "bee" / "01.jpg"
    full = decode(path.read_bytes(), 3)
    assert full.shape == (3, 300, 400)
    # The whole image as the crop window: the training crop is the full decode resized.
    whole = Geometry(64, train=True, scale=(1, 1), ratio=(4 / 3, 4 / 3), hflip=False)
    assert torch.equal(whole(full), TF.resize(full, [64, 64], antialias=True))
    evaluate = Geometry(64, crop_pct=0.875)
    short = math.floor(64 / 0.875)
    expected = TF.center_crop(TF.resize(full, [short], antialias=True), [64, 64])
    assert torch.equal(evaluate(full), expected)
    train = Geometry(64, train=True)
    torch.manual_seed(0)
    crops = torch.stack([train(full) for _ in range(4)])
    assert crops.shape == (4, 3, 64, 64) and not torch.equal(crops[0], crops[1])
    squash = Geometry(64, "squash", train=True)
    assert torch.equal(squash(full), TF.resize(full, [64, 64], antialias=True))


def test_balanced_sampler_draws_classes_evenly_and_repeats_an_epoch():
    labels = torch.tensor([0] * 1000 + [1] * 100 + [2] * 10)
    sampler = BalancedSampler(labels, seed=3)
    sampler.set_epoch(2)
    drawn = list(sampler)
    counts = torch.bincount(labels[drawn], minlength=3)
    assert len(drawn) == 1110 and counts.min() > 300
    assert list(sampler) == drawn
    sampler.set_epoch(3)
    assert list(sampler) != drawn


def test_default_worker_count_follows_the_cores(photos):
    dm = ImageFolder(root=str(photos), num_classes=3)
    assert dm.num_workers == min(8, len(os.sched_getaffinity(0)))
