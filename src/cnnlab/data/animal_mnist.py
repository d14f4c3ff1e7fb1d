"""Animal-MNIST: 10,000 28x28 grey silhouettes of ten animals (1,000 each), the "different
domain" data set for transfer experiments from Fashion-MNIST (PyPI package ``animal-mnist``).

It ships no test split; cnnlab holds out a stratified ``test_fraction`` with a fixed
``split_seed``, so that runs with different seeds are tested on the same images.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.base import InMemoryImages, stratified_split, system_datasets_dir
from cnnlab.errors import CnnlabError

FILES = {"images": "animal_data_version_3.gz", "labels": "animal_label_version_3.gz"}


def read_pickled_array(path: Path) -> np.ndarray:
    """A numpy array stored as a gzip-compressed pickle (the package's own format)."""
    with gzip.open(path, "rb") as f:
        array = pickle.load(f)
    if not isinstance(array, np.ndarray):
        raise CnnlabError(f"{path} holds a {type(array).__name__}, not the expected numpy array.")
    return array


class AnimalMNIST(InMemoryImages):
    """Animal-MNIST from ``root/animal_mnist`` (where ``make data`` puts it), ``root`` itself or
    ``$CNNLAB_DATASETS_DIR/animal_mnist``."""

    stored_format = (1, 28)
    class_names_ = (
        "Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra",
    )  # fmt: skip

    def __init__(
        self,
        root: str | None = None,
        num_classes: int = 10,
        channels: int = 1,
        image_size: int = 28,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        val_size: int = 1000,
        test_fraction: float = 0.2,
        split_seed: int = 0,
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
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def _candidates(self) -> list[Path]:
        dirs = [self.root / "animal_mnist", self.root] if self.root else []
        return [*dirs, system_datasets_dir() / "animal_mnist"]

    def locate(self) -> dict[str, Path]:
        for folder in self._candidates():
            if all((folder / name).is_file() for name in FILES.values()):
                return {key: folder / name for key, name in FILES.items()}
        raise CnnlabError(
            f"Animal-MNIST was not found: looked for {FILES['images']} and {FILES['labels']} in "
            f"{', '.join(map(str, self._candidates()))}. Run `make data` (or python "
            "scripts/offline_assets.py --only animal_mnist), which copies them from the PyPI "
            "package animal-mnist into data/animal_mnist, or point data.root at their folder."
        )

    def prepare_data(self) -> None:
        self.locate()

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        files = self.locate()
        images = torch.from_numpy(read_pickled_array(files["images"]).astype(np.uint8))
        labels = torch.from_numpy(read_pickled_array(files["labels"]).astype(np.int64))
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise CnnlabError(
                f"{files['images']} holds images of shape {tuple(images.shape)} with "
                f"{len(labels)} labels; expected (N, 28, 28) and N labels."
            )
        train, test = stratified_split(labels.tolist(), self.test_fraction, self.split_seed)
        return images[train], labels[train], images[test], labels[test]
