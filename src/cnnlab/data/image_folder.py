"""Any folder tree of images, one sub-folder per class, like torchvision's ImageFolder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from cnnlab.data.base import ImageDataModule, channel_stats, per_class_subset
from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
STATS_SAMPLE = 512


def scan(
    folder: Path, class_names: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Image paths and labels under ``folder/<class>/``; classes sorted by name unless given."""
    if class_names is None:
        class_names = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in EXTENSIONS and path.is_file():
                paths.append(path)
                labels.append(label)
    return paths, labels, class_names


class ImageFiles(Dataset):
    """Decodes one image per item to a uint8 tensor of the requested channels and square size."""

    def __init__(
        self, paths: list[Path], labels: list[int], channels: int, image_size: int
    ) -> None:
        self.paths, self.labels = paths, torch.tensor(labels, dtype=torch.long)
        self.mode = "L" if channels == 1 else "RGB"
        self.size = (image_size, image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with Image.open(self.paths[i]) as img:
                img = img.convert(self.mode).resize(self.size, Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError) as e:
            raise CnnlabError(f"Cannot decode image {self.paths[i]}: {e}") from None
        return pil_to_tensor(img), self.labels[i]


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions split so that ``fraction`` of each class (at least one image if the class has
    two or more) goes to the second list."""
    gen = torch.Generator().manual_seed(seed)
    labels_t = torch.tensor(labels)
    keep, held = [], []
    for c in labels_t.unique():
        where = (labels_t == c).nonzero().flatten()
        where = where[torch.randperm(len(where), generator=gen)]
        n_held = round(len(where) * fraction)
        if fraction > 0 and n_held == 0 and len(where) > 1:
            n_held = 1
        held += where[:n_held].tolist()
        keep += where[n_held:].tolist()
    return sorted(keep), sorted(held)


class ImageFolder(ImageDataModule):
    """Images from ``root``: ``root/train``, ``root/val``, ``root/test`` where they exist, and
    seeded stratified splits of the training images (``val_fraction``, ``test_fraction``) where
    they don't. Normalisation statistics come from (a sample of) the training split."""

    def __init__(
        self,
        root: str,
        num_classes: int,
        channels: int = 3,
        image_size: int = 64,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        samples_per_class: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            num_classes, channels, image_size, batch_size, eval_batch_size, num_workers, seed
        )
        self.root = Path(root).expanduser()
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.samples_per_class = samples_per_class

    def _files(self, paths: list[Path], labels: list[int], positions: list[int]) -> ImageFiles:
        return ImageFiles(
            [paths[i] for i in positions],
            [labels[i] for i in positions],
            self.channels,
            self.image_size,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        has_train_dir = (self.root / "train").is_dir()
        train_root = self.root / "train" if has_train_dir else self.root
        paths, labels, self.class_names = scan(train_root)
        if not paths:
            raise CnnlabError(
                f"data.root={str(self.root)!r} holds no images: expected root/<class>/<image> or "
                f"root/train/<class>/<image> with extensions {', '.join(EXTENSIONS)}."
            )
        if len(self.class_names) != self.num_classes:
            raise CnnlabError(
                f"data.num_classes={self.num_classes} but {train_root} has "
                f"{len(self.class_names)} class folders ({', '.join(self.class_names)})."
            )
        splits = {}
        positions = list(range(len(paths)))
        share_left = 1.0  # fractions are of the whole tree, not of what is left
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            folder = self.root / split
            if has_train_dir and folder.is_dir():
                split_paths, split_labels, _ = scan(folder, self.class_names)
                splits[split] = ImageFiles(
                    split_paths, split_labels, self.channels, self.image_size
                )
            else:
                kept, held = stratified_split(
                    [labels[i] for i in positions], fraction / share_left, self.seed
                )
                share_left -= fraction
                splits[split] = self._files(paths, labels, [positions[i] for i in held])
                positions = [positions[i] for i in kept]
        if self.samples_per_class:
            kept_labels = torch.tensor([labels[i] for i in positions])
            chosen = per_class_subset(kept_labels, self.samples_per_class, self.seed)
            positions = [positions[i] for i in chosen.tolist()]
        self.train_set = self._files(paths, labels, positions)
        self.val_set, self.test_set = splits["val"], splits["test"]
        log.info(
            "image_folder %s: %d classes, %d train / %d val / %d test images",
            self.root,
            self.num_classes,
            len(self.train_set),
            len(self.val_set),
            len(self.test_set),
        )
        self.mean, self.std = self._stats()

    def _stats(self) -> tuple[list[float], list[float]]:
        n = len(self.train_set)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:STATS_SAMPLE]
        sample = torch.stack([self.train_set[int(i)][0] for i in pick])
        return channel_stats(sample)
