"""Colour data sets that torchvision downloads: CIFAR-10, CIFAR-100 (Krizhevsky, 2009) and SVHN
(Netzer et al., 2011), all 32x32 RGB.

cnnlab reads the files in their original formats itself (CIFAR's pickled python batches, SVHN's
MATLAB files), so files put in place by hand are read without torchvision's checksum step, and
uses torchvision only to download them.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.base import InMemoryImages, system_datasets_dir
from cnnlab.errors import CnnlabError

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


class TorchvisionArchive(InMemoryImages):
    """A data set found in ``root/<folder>`` or ``$CNNLAB_DATASETS_DIR/<folder>``, else
    downloaded into ``root`` by torchvision's ``torchvision_name`` class when ``download``."""

    stored_format = (3, 32)
    torchvision_name = ""
    folder = ""  # the folder the files sit in (CIFAR's archives unpack into one)
    required: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        num_classes: int = 10,
        channels: int = 3,
        image_size: int = 32,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        samples_per_class: int | Sequence[int] | None = None,
        num_workers: int = 0,
        seed: int = 0,
        classes: Sequence[int] | None = None,
        sampler: str | None = None,
        normalize: str = "pretrained",
    ) -> None:
        super().__init__(
            num_classes, channels, image_size, batch_size, eval_batch_size, val_size,
            samples_per_class, num_workers, seed, classes, sampler, normalize,
        )  # fmt: skip
        self.root = Path(root).expanduser() if root else None
        self.download = download

    def _candidates(self) -> list[Path]:
        dirs = [self.root / self.folder, self.root] if self.root else []
        return [*dirs, system_datasets_dir() / self.folder]

    def _find(self) -> Path | None:
        for folder in self._candidates():
            if all((folder / name).is_file() for name in self.required):
                return folder
        return None

    def locate(self) -> Path:
        """The folder holding the data set's files; downloads them if allowed and absent."""
        if folder := self._find():
            return folder
        error = "downloading was disabled (data.download=false)"
        if self.download and self.root is not None:
            error = self._download()
            if folder := self._find():
                return folder
        raise CnnlabError(
            f"{self.torchvision_name} was not found and could not be downloaded. Looked for "
            f"{', '.join(self.required)} in: {', '.join(map(str, self._candidates()))}; the "
            f"download failed: {error}. Either point data.root at a folder holding these files "
            f"(torchvision's layout, root/{self.folder}), or run once with network access so "
            "torchvision can download them into data.root."
        )

    def _download(self) -> str:
        from torchvision import datasets

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            self.fetch(getattr(datasets, self.torchvision_name), str(self.root))
        except Exception as e:  # every network failure mode ends in the same advice
            return f"{type(e).__name__}: {e}".splitlines()[0]
        finally:
            socket.setdefaulttimeout(previous)
        return "no error, but the files did not appear"

    def fetch(self, dataset_class, root: str) -> None:
        for train in (True, False):
            dataset_class(root, train=train, download=True)

    def prepare_data(self) -> None:
        self.locate()


class CIFAR10(TorchvisionArchive):
    torchvision_name = "CIFAR10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    required = (*train_files, *test_files)
    label_key = "labels"
    class_names_ = (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip

    def _read(self, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [_unpickle(p) for p in paths]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(b[self.label_key]) for b in batches])
        return torch.from_numpy(data.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))

    def load(self) -> Arrays:
        folder = self.locate()
        train = self._read([folder / f for f in self.train_files])
        return *train, *self._read([folder / f for f in self.test_files])


class CIFAR100(CIFAR10):
    torchvision_name = "CIFAR100"
    folder = "cifar-100-python"
    train_files, test_files = ("train",), ("test",)
    required = ("train", "test", "meta")
    label_key = "fine_labels"
    class_names_ = ()  # the hundred names come from the meta file

    def select_classes(self, all_names: Sequence[str]) -> dict[int, int]:
        # The hundred fine-label names live in the data set's meta file, read at setup.
        return super().select_classes(all_names if all_names else [str(i) for i in range(100)])

    def load(self) -> Arrays:
        folder = self.locate()
        self.class_names_ = tuple(_unpickle(folder / "meta")["fine_label_names"])
        return super().load()


class SVHN(TorchvisionArchive):
    """Street View House Numbers, cropped digits: 73,257 training and 26,032 test images (the
    "extra" split is not used). The files label the digit 0 as 10; cnnlab uses 0..9."""

    torchvision_name = "SVHN"
    folder = "svhn"
    required = ("train_32x32.mat", "test_32x32.mat")
    class_names_ = tuple(str(d) for d in range(10))

    def _candidates(self) -> list[Path]:
        # torchvision downloads SVHN straight into root, not into a sub-folder.
        return [*([self.root] if self.root else []), *super()._candidates()]

    def fetch(self, dataset_class, root: str) -> None:
        for split in ("train", "test"):
            dataset_class(root, split=split, download=True)

    def load(self) -> Arrays:
        from scipy.io import loadmat

        folder = self.locate()
        arrays = []
        for name in self.required:
            mat = loadmat(folder / name)
            images = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # (32,32,3,N) -> NCHW
            labels = mat["y"].astype(np.int64).flatten() % 10
            arrays += [torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels)]
        return tuple(arrays)
