"""Data modules on real files: Fashion-MNIST's IDX files and a tree of PNGs."""

from __future__ import annotations

import torch

from cnnlab.data.image_folder import ImageFolder
from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.errors import CnnlabError
from conftest import needs_fmnist


@needs_fmnist
def test_fashion_mnist_splits_and_statistics():
    dm = FashionMNIST(root=None, download=False, seed=3)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.long
    # Every class is present in every split, in near-equal numbers (the data set is balanced).
    for split in (dm.train_set, dm.val_set, dm.test_set):
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() > 0.8 * counts.float().mean()
    # The published training-set statistics of Fashion-MNIST: mean 0.286, std 0.353.
    assert abs(dm.mean[0] - 0.286) < 0.002 and abs(dm.std[0] - 0.353) < 0.002
    assert dm.class_names[9] == "Ankle boot"
    # Same seed, same split; another seed, another split.
    again = FashionMNIST(root=None, download=False, seed=3)
    again.setup()
    other = FashionMNIST(root=None, download=False, seed=4)
    other.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images)
    assert not torch.equal(other.val_set.images, dm.val_set.images)


@needs_fmnist
def test_samples_per_class_subset():
    dm = FashionMNIST(root=None, download=False, samples_per_class=7)
    dm.setup()
    assert torch.equal(torch.bincount(dm.train_set.labels), torch.full((10,), 7))
    assert len(dm.val_set) == 5_000


def test_missing_data_offline_names_every_way_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATASETS_DIR", str(tmp_path / "system"))
    dm = FashionMNIST(root=str(tmp_path / "data"), download=True)
    try:
        dm.prepare_data()
    except CnnlabError as e:
        message = str(e)
    else:  # a machine with network access downloaded it: the files must now be there
        assert list((tmp_path / "data" / "FashionMNIST" / "raw").glob("train-images*"))
        return
    assert str(tmp_path / "data") in message and str(tmp_path / "system") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.root" in message and "download" in message
    assert "\n" not in message


def test_image_folder_splits_a_single_tree(image_tree):
    dm = ImageFolder(root=str(image_tree), num_classes=3, image_size=32, val_fraction=0.1,
                     test_fraction=0.2, num_workers=0, seed=0)  # fmt: skip
    dm.setup()
    assert dm.class_names == ["bag", "trouser", "tshirt"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (84, 12, 24)
    train, val, test = (set(map(str, s.paths)) for s in (dm.train_set, dm.val_set, dm.test_set))
    assert not (train & val) and not (train & test) and not (val & test)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.uint8
    assert set(y.tolist()) <= {0, 1, 2}
    assert len(dm.mean) == 3 and all(0.0 < m < 1.0 for m in dm.mean)


def test_image_folder_uses_explicit_split_dirs(image_tree, tmp_path):
    import shutil

    for split in ("train", "test"):
        shutil.copytree(image_tree, tmp_path / split)
    dm = ImageFolder(root=str(tmp_path), num_classes=3, image_size=28, val_fraction=0.25,
                     test_fraction=0.5, num_workers=0)  # fmt: skip
    dm.setup()
    assert len(dm.test_set) == 120  # the whole test/ dir, not a fraction of train/
    assert (len(dm.train_set), len(dm.val_set)) == (90, 30)


def test_image_folder_reports_a_broken_image(image_tree, tmp_path):
    import shutil

    shutil.copytree(image_tree, tmp_path / "tree")
    broken = tmp_path / "tree" / "bag" / "000.png"
    broken.write_bytes(b"not a png")
    dm = ImageFolder(root=str(tmp_path / "tree"), num_classes=3, num_workers=0,
                     on_corrupt="error")  # fmt: skip
    try:
        dm.setup()
    except CnnlabError as e:
        assert str(broken) in str(e)
    else:
        raise AssertionError("a broken image went unnoticed")
