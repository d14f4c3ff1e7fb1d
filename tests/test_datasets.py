"""The data sets beyond Fashion-MNIST, the class filter, and image folders with bad files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.animal_mnist import AnimalMNIST
from cnnlab.data.image_folder import ImageFolder
from cnnlab.data.mnist_like import KMNIST, MNIST, FashionMNIST
from cnnlab.data.torchvision_sets import CIFAR10, CIFAR100, SVHN
from cnnlab.errors import CnnlabError
from conftest import needs_fmnist

DATA = Path(__file__).parents[1] / "data"
needs_animals = pytest.mark.skipif(
    not (DATA / "animal_mnist" / "animal_data_version_3.gz").is_file(),
    reason="Animal-MNIST not in data/ (make data puts it there)",
)


@needs_animals
def test_animal_mnist_stratified_fixed_test_split():
    dm = AnimalMNIST(root=str(DATA), seed=1)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7000, 1000, 2000)
    assert torch.equal(torch.bincount(dm.test_set.labels), torch.full((10,), 200))
    assert dm.train_set.images.shape[1:] == (1, 28, 28) and dm.class_names[9] == "Zebra"
    other = AnimalMNIST(root=str(DATA), seed=2)
    other.setup()
    # Another seed draws another validation split but tests on the same images.
    assert torch.equal(other.test_set.images, dm.test_set.images)
    assert not torch.equal(other.val_set.images, dm.val_set.images)


@needs_fmnist
def test_class_filter_reindexes_labels_and_keeps_names():
    full = FashionMNIST(root=None, download=False)
    full.setup()
    dm = FashionMNIST(root=None, download=False, classes=[7, 2, 9], num_classes=3)
    dm.setup()
    assert dm.class_names == ["Sneaker", "Pullover", "Ankle boot"]
    assert set(dm.test_set.labels.tolist()) == {0, 1, 2}
    assert len(dm.test_set) == 3000
    # The images labelled 0 are exactly the test set's sneakers (class 7).
    assert torch.equal(dm.test_set.images[dm.test_set.labels == 0],
                       full.test_set.images[full.test_set.labels == 7])  # fmt: skip


def test_bad_class_filter_and_class_count_fail_early():
    with pytest.raises(CnnlabError, match=r"data.classes=\[3, 12\].*0\.\.9"):
        FashionMNIST(root=None, download=False, classes=[3, 12], num_classes=2)
    with pytest.raises(CnnlabError, match="data.num_classes=10"):
        FashionMNIST(root=None, download=False, classes=[0, 1], num_classes=10)
    with pytest.raises(CnnlabError, match="data.num_classes=5 but the data set has 10 classes"):
        MNIST(root=None, download=False, num_classes=5)


@pytest.mark.parametrize("cls", [MNIST, KMNIST, CIFAR10, CIFAR100, SVHN])
def test_torchvision_sets_offline_message(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATASETS_DIR", str(tmp_path / "system"))
    dm = cls(root=str(tmp_path / "data"), download=False, num_classes=len(cls.class_names_) or 100)
    with pytest.raises(CnnlabError) as e:
        dm.prepare_data()
    message = str(e.value)
    assert cls.torchvision_name in message and str(tmp_path / "data") in message
    assert str(tmp_path / "system") in message and "data.download=false" in message
    assert "\n" not in message


def _cifar_batch(path: Path, rng, n: int, classes: int, key: str) -> None:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({"data": data, key: rng.integers(0, classes, n).tolist()}, f)


def test_cifar10_reads_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR10.required:
        _cifar_batch(folder / name, rng, 60, 10, "labels")
    dm = CIFAR10(root=str(tmp_path), download=False, val_size=50, classes=[3, 5], num_classes=2)
    dm.setup()
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    cats = [i for i, y in enumerate(batch["labels"]) if y == 3]
    first = torch.from_numpy(batch["data"][cats[0]].reshape(3, 32, 32))
    everything = torch.cat([dm.train_set.images, dm.val_set.images])
    assert (everything == first).flatten(1).all(1).any()  # CHW layout, red plane first
    with open(folder / "test_batch", "rb") as f:
        test_labels = pickle.load(f)["labels"]
    assert dm.class_names == ["cat", "dog"]
    assert len(dm.test_set) == sum(y in (3, 5) for y in test_labels)


def test_cifar100_and_svhn_read_their_formats(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        _cifar_batch(folder / name, rng, 300, 100, "fine_labels")
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    dm = CIFAR100(root=str(tmp_path), download=False, num_classes=100, val_size=30)
    dm.setup()
    assert dm.class_names[42] == "c42" and len(dm.train_set) == 270
    x = rng.integers(0, 256, (32, 32, 3, 20), dtype=np.uint8)
    for name in SVHN.required:
        savemat(tmp_path / name, {"X": x, "y": np.arange(1, 21).reshape(-1, 1) % 10 + 1})
    dm = SVHN(root=str(tmp_path), download=False, val_size=5)
    dm.setup()
    assert torch.equal(dm.test_set.images[0], torch.from_numpy(x[..., 0]).permute(2, 0, 1))
    assert dm.test_set.labels[:10].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


@pytest.fixture
def messy_tree(image_tree, tmp_path) -> Path:
    """The image tree with a truncated PNG, a text file named .png, a README, and images stored
    as L, RGBA, P and 16-bit grey."""
    root = tmp_path / "messy"
    shutil.copytree(image_tree, root)
    whole = (root / "bag" / "000.png").read_bytes()
    (root / "bag" / "000.png").write_bytes(whole[: len(whole) // 2])
    (root / "trouser" / "notes.png").write_text("not an image")
    (root / "trouser" / "README.txt").write_text("ignored")
    grey = Image.open(image_tree / "tshirt" / "001.png").convert("L")
    grey.save(root / "tshirt" / "001.png")
    grey.convert("RGBA").save(root / "tshirt" / "002.png")
    grey.convert("P").save(root / "tshirt" / "003.png")
    deep = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    deep.save(root / "tshirt" / "004.png")
    return root


def test_image_folder_skips_corrupt_files_and_converts_modes(messy_tree, image_tree, caplog):
    dm = ImageFolder(root=str(messy_tree), num_classes=3, image_size=28, num_workers=0,
                     resize="squash", verify=True)  # fmt: skip
    with caplog.at_level("WARNING"):
        dm.setup()
    assert sorted(Path(p).name for p in dm.skipped_files) == ["000.png", "notes.png"]
    assert "bag/000.png" in caplog.text and "trouser/notes.png" in caplog.text
    # 120 images and notes.png, less the two that the verify pass could not decode
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 119
    reference = torch.from_numpy(np.asarray(Image.open(image_tree / "tshirt" / "001.png")))
    for name in ("001.png", "002.png", "003.png", "004.png"):
        for split in (dm.train_set, dm.val_set, dm.test_set):
            if (where := [i for i, p in enumerate(split.paths) if p == messy_tree / "tshirt" /
                          name]):  # fmt: skip
                image = split[where[0]][0]
                assert image.shape == (3, 28, 28) and image.dtype == torch.uint8
                # 16-bit grey scaled down, not clipped to white; palette and alpha flattened.
                assert (image.int() - reference.permute(2, 0, 1)).abs().max() <= 1
    with pytest.raises(CnnlabError, match="2 image.*cannot be decoded.*notes.png"):
        ImageFolder(root=str(messy_tree), num_classes=3, on_corrupt="error", verify=True,
                    num_workers=1).setup()  # fmt: skip


def test_image_folder_structure_errors(image_tree, tmp_path, caplog):
    shutil.copytree(image_tree, tmp_path / "t")
    (tmp_path / "t" / "empty").mkdir()
    with_empty = ImageFolder(root=str(tmp_path / "t"), num_classes=4)
    with caplog.at_level("WARNING"):
        with_empty.setup()
    assert with_empty.class_names == ["bag", "empty", "trouser", "tshirt"]
    assert "hold no images: empty" in caplog.text
    assert 1 not in with_empty.train_set.labels.tolist()
    shutil.copytree(image_tree / "bag", tmp_path / "one" / "bag")
    with pytest.raises(CnnlabError, match="1 class folder.*at least 2"):
        ImageFolder(root=str(tmp_path / "one"), num_classes=1).setup()
    with pytest.raises(CnnlabError, match="num_classes=5 but the data set has 3"):
        ImageFolder(root=str(image_tree), num_classes=5).setup()
    dm = ImageFolder(root=str(image_tree), num_classes=2, classes=[2, 0])
    dm.setup()
    assert dm.class_names == ["tshirt", "bag"]
    shirts = [p for p, y in zip(dm.train_set.paths, dm.train_set.labels, strict=True) if y == 0]
    assert shirts and all(p.parent.name == "tshirt" for p in shirts)
