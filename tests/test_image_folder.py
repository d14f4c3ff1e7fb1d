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
from cnnlab.data.image_folder import ImageFiles, ImageFolder
from cnnlab.data.images import EncodedBatch, Geometry, check_decode, decode
from cnnlab.errors import CnnlabError
from conftest import needs_fmnist, run_cli
from test_resume import killed_and_resumed, metrics_rows, weights


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


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[Path]:
    """Images in every mode a folder may hold: JPEGs in RGB, L (grey) and CMYK, PNGs in RGBA,
    P (palette), L and 16-bit grey."""
    root = tmp_path_factory.mktemp("mixed")
    rgb = photo(7, (320, 240))
    images = {
        "rgb.jpg": rgb, "tall.jpg": photo(8, (200, 330)), "grey.jpg": rgb.convert("L"),
        "cmyk.jpg": rgb.convert("CMYK"), "rgba.png": photo(9, (150, 150)).convert("RGBA"),
        "palette.png": rgb.convert("P"), "grey.png": rgb.convert("L"),
        "deep.png": Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257),
    }  # fmt: skip
    for name, img in images.items():
        img.save(root / name, quality=90) if name.endswith(".jpg") else img.save(root / name)
    return sorted(root.iterdir())


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("train", [True, False])
def test_batched_device_decode_crops_as_the_workers_do(mixed, channels, train):
    """data.decode=gpu's path on the CPU device: the workers hand on JPEG bytes (grey and RGB)
    with crops drawn from the header's size, other images decoded; one batched decode and the
    crops give the very pixels and labels of the per-image path under the same seeds."""
    labels = list(range(len(mixed)))
    geometry = Geometry(48, train=train, scale=(0.2, 1.0))
    workers = ImageFiles(mixed, labels, channels, 48, geometry)
    encoding = ImageFiles(mixed, labels, channels, 48, geometry, encoded=True)
    draws = [(i, 1000 + k) for k, i in enumerate([*labels, 0, 4])]
    expected, expected_labels, _ = workers.__getitems__(draws)
    batch, got_labels, skipped = encoding.__getitems__(draws)
    assert isinstance(batch, EncodedBatch) and skipped == []
    as_bytes = {Path(n).name for n, x in zip(batch.names, batch.images, strict=True)
                if isinstance(x, bytes)}  # fmt: skip
    assert as_bytes == {"rgb.jpg", "tall.jpg", "grey.jpg"}  # CMYK and PNGs: decoded in workers
    images, source, unreadable = batch.decode("cpu")
    assert unreadable == [] and source == list(range(len(draws)))
    assert images.shape == (len(draws), channels, 48, 48)
    # Exact: on the CPU both paths decode with the same libjpeg-turbo and crop with the same
    # uint8 resampling. (On a GPU, nvJPEG's IDCT and a float resize differ by a few levels.)
    assert torch.equal(images, expected) and torch.equal(got_labels, expected_labels)
    if train:  # a new key, a new crop
        again, _, _ = workers.__getitems__([(0, 1), (0, 2)])
        assert not torch.equal(again[0], again[1])


def test_a_jpeg_that_fails_on_the_device_is_replaced_in_its_batch_and_named(
    mixed, photos, tmp_path
):
    whole = mixed[[p.name for p in mixed].index("rgb.jpg")].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3])  # the header is intact
    files = [tmp_path / "cut.jpg", *mixed[:3]]
    encoding = ImageFiles(files, [5, 6, 7, 8], 3, 32, Geometry(32, train=True), encoded=True)
    batch, labels, skipped = encoding.__getitems__([(i, i) for i in range(4)])
    assert skipped == []  # found where it is decoded, not in the workers
    # Lightning's hook between loader and model, as a data module runs it for such a batch.
    dm = ImageFolder(root=str(photos), num_classes=3, num_workers=0, cache_dir=str(tmp_path))
    images, got = dm.transfer_batch_to_device((batch, labels), torch.device("cpu"), 0)
    assert images.shape == (4, 3, 32, 32) and got.tolist() == [6, 6, 7, 8]
    [(name, why)] = dm.skipped_files.items()
    assert name.endswith("cut.jpg") and "truncated" in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_decode_gpu_without_cuda_is_one_paragraph_and_exit_2(image_tree, tmp_path):
    proc = run_cli(["data=image_folder", f"data.root={image_tree}", "data.decode=gpu"],
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [paragraph] = [line for line in proc.stderr.splitlines() if line.startswith("cnnlab: error")]
    assert "data.decode=gpu" in paragraph and "data.decode=cpu" in paragraph
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("*.ckpt"))
    with pytest.raises(CnnlabError, match=r"data.decode='nvjpeg': expected cpu .* or gpu"):
        check_decode("nvjpeg")


def test_training_crops_follow_the_seed_and_epoch_not_the_global_random_state(photos, tmp_path):
    """Each draw's crop is seeded by the run's seed, the epoch and its slot: a resumed process,
    whose generators and workers start anew, crops as the uninterrupted one did."""
    dm = ImageFolder(root=str(photos), num_classes=3, image_size=32, batch_size=5,
                     num_workers=0, seed=3, cache_dir=str(tmp_path))  # fmt: skip
    dm.setup()

    def epoch(number: int, global_seed: int) -> torch.Tensor:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(number)
        torch.manual_seed(global_seed)
        return torch.cat([x for x, _ in loader])

    first = epoch(0, global_seed=1)
    assert torch.equal(first, epoch(0, global_seed=2))
    assert not torch.equal(first, epoch(1, global_seed=1))


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


@pytest.mark.heavy  # three trainings of LeNet-5 on 96 images: about 2 minutes on 2 loaded cores
@needs_fmnist
def test_sigkilled_folder_run_with_random_crops_resumes_bit_exactly(image_tree, tmp_path):
    """Random resized crops and flips in two persistent workers, killed mid-epoch: the resumed
    run's weights and logs equal an uninterrupted run's (the workers' own random streams start
    anew in the resumed process; each draw's crop is seeded by its slot in the epoch)."""
    args = [f"data.root={image_tree}", "data=image_folder", "data.image_size=32",
            "data.crop_scale=[0.3,1.0]", "data.num_workers=2", "data.batch_size=4",
            "data.eval_batch_size=24", "model=lenet5", "optimizer.lr=0.01",
            "trainer.max_epochs=2", "trainer.deterministic=true", "test=false", "callbacks=ema",
            "callbacks.last_checkpoint.every_n_train_steps=5", "callbacks.progress.every_n_steps=2",
            f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    whole_dir, run_dir = killed_and_resumed(args, tmp_path, "epoch 1 step 14/", (24, 48))
    expected, got = weights(whole_dir), weights(run_dir)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert metrics_rows(run_dir) == metrics_rows(whole_dir)
