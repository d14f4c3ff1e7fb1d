"""MNIST-family data sets stored as the original IDX files: Fashion-MNIST (the default), MNIST
and Kuzushiji-MNIST.

Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms" (2017): 60,000 training and 10,000 test images, 28x28 grey levels, 10 classes, in
the same IDX format as LeCun's MNIST. Clanuwat et al., "Deep Learning for Classical Japanese
Literature" (2018): KMNIST, ten cursive Hiragana characters in the same format.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import torch

from cnnlab.data.base import InMemoryImages, system_datasets_dir
from cnnlab.data.idx import read_idx
from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder``, gzipped or not, or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        hits = [
            folder / f"{stem}{ext}" for ext in ("", ".gz") if (folder / f"{stem}{ext}").is_file()
        ]
        if not hits:
            return None
        found[key] = hits[0]
    return found


class MNISTLike(InMemoryImages):
    """An IDX data set found in ``root`` (as given, or torchvision's ``root/<Name>/raw``), then in
    the system data set folder (``$CNNLAB_DATASETS_DIR``, default /usr/share/datasets, where
    Debian's dataset packages install), then downloaded by torchvision into ``root``."""

    stored_format = (1, 28)
    torchvision_name = ""
    system_dir = ""
    # A Debian package that installs the files in /usr/share/datasets/<system_dir>, if any.
    debian_package = ""

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        num_classes: int = 10,
        channels: int = 1,
        image_size: int = 28,
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
        dirs = []
        if self.root is not None:
            dirs += [self.root, self.root / self.torchvision_name / "raw"]
        return [
            *dirs,
            system_datasets_dir() / self.system_dir,
        ]

    def locate(self) -> dict[str, Path]:
        """Paths of the four IDX files; downloads them if allowed and nothing local is found."""
        for folder in self._candidates():
            if files := _find_files(folder):
                return files
        download_error = "downloading was disabled (data.download=false)"
        if self.download and self.root is not None:
            download_error = self._download()
            if files := _find_files(self.root / self.torchvision_name / "raw"):
                return files
        looked = ", ".join(str(p) for p in self._candidates())
        debian = (
            f"install the Debian package {self.debian_package} (apt-get install "
            f"{self.debian_package}), which puts them in /usr/share/datasets/{self.system_dir}; "
            if self.debian_package
            else f"put them in $CNNLAB_DATASETS_DIR/{self.system_dir}; "
        )
        raise CnnlabError(
            f"{self.torchvision_name} was not found and could not be downloaded. Looked for "
            f"{FILES['train_images']}[.gz] and its three sibling files in: {looked}; the download "
            f"failed: {download_error}. Any of these fixes it: (1) point data.root at a folder "
            "holding the four original IDX files (or torchvision's layout root/"
            f"{self.torchvision_name}/raw); (2) {debian}(3) run once with network access so "
            "torchvision can download them into data.root."
        )

    def _download(self) -> str:
        from torchvision import datasets

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            for train in (True, False):
                getattr(datasets, self.torchvision_name)(str(self.root), train=train, download=True)
        except Exception as e:  # every network failure mode ends in the same advice
            return f"{type(e).__name__}: {e}".splitlines()[0]
        finally:
            socket.setdefaulttimeout(previous)
        return "no error, but the files did not appear"

    def prepare_data(self) -> None:
        self.locate()

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        files = self.locate()
        log.info("Reading %s from %s", self.torchvision_name, files["train_images"].parent)
        return tuple(read_idx(files[k]) for k in FILES)


class FashionMNIST(MNISTLike):
    torchvision_name = "FashionMNIST"
    system_dir = "fashion-mnist"
    debian_package = "dataset-fashion-mnist"
    class_names_ = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


class MNIST(MNISTLike):
    torchvision_name = "MNIST"
    system_dir = "mnist"
    class_names_ = tuple(str(d) for d in range(10))


class KMNIST(MNISTLike):
    torchvision_name = "KMNIST"
    system_dir = "kmnist"
    # The romanised names of the ten Hiragana characters (kmnist_classmap.csv).
    class_names_ = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
