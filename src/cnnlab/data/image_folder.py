"""Any folder tree of images, one sub-folder per class, like torchvision's ImageFolder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from cnnlab.data.base import (
    ImageDataModule,
    Transform,
    channel_stats,
    per_class_subset,
    stratified_split,
)
from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
STATS_SAMPLE = 512
ON_CORRUPT = ("skip", "error")
LISTED = 20  # corrupt files named in a message; the rest are counted


def scan(
    folder: Path, class_names: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Image paths and labels under ``folder/<class>/``; classes sorted by name unless given."""
    if class_names is None:
        class_names = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if len(class_names) < 2:
            raise CnnlabError(
                f"{folder} has {len(class_names)} class folder(s) ({', '.join(class_names)}); "
                "classification needs at least 2: a tree root/<class>/<image>."
            )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        found = [p for p in sorted(class_dir.rglob("*")) if p.suffix.lower() in EXTENSIONS]
        found = [p for p in found if p.is_file()]
        if not found:
            raise CnnlabError(
                f"The class folder {class_dir} holds no images (looked for the extensions "
                f"{', '.join(EXTENSIONS)}). Add images or remove the folder."
            )
        paths += found
        labels += [label] * len(found)
    return paths, labels, class_names


def convert(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` ("L" or "RGB"), whatever it was stored as: 16- and 32-bit grey levels
    are scaled to 8 bits (PIL's own conversion clips them), palette and alpha images are
    flattened."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array / top * 255 + 0.5, 0, 255).astype(np.uint8))
    elif img.mode == "P":
        img = img.convert("RGBA")
    return img.convert(mode)


def decode(path: Path, mode: str, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as img:
        return convert(img, mode).resize(size, Image.Resampling.BILINEAR)


def find_corrupt(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, reason) of each file that does not decode completely: truncated, damaged, or not
    an image at all despite its extension. Decoding everything once at setup is what keeps such
    a file from stopping training in the middle of an epoch."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            bad.append((path, f"{type(e).__name__}: {e}".splitlines()[0]))
    return bad


class ImageFiles(Dataset):
    """Decodes one image per item to a uint8 tensor of the requested channels and square size."""

    def __init__(
        self, paths: list[Path], labels: list[int], channels: int, image_size: int
    ) -> None:
        self.paths, self.labels = paths, torch.tensor(labels, dtype=torch.long)
        self.mode = "L" if channels == 1 else "RGB"
        self.size = (image_size, image_size)
        self.transform: Transform | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def images_and_labels(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded images (not augmented) and labels at ``indices``."""
        images = [pil_to_tensor(decode(self.paths[i], self.mode, self.size)) for i in indices]
        return torch.stack(images), self.labels[indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = pil_to_tensor(decode(self.paths[i], self.mode, self.size))
        except (OSError, UnidentifiedImageError) as e:
            raise CnnlabError(f"Cannot decode image {self.paths[i]}: {e}") from None
        return (self.transform(image) if self.transform else image), self.labels[i]


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
        classes: Sequence[int] | None = None,
        normalize: str = "pretrained",
        on_corrupt: str = "skip",
    ) -> None:
        super().__init__(
            num_classes, channels, image_size, batch_size, eval_batch_size, num_workers, seed,
            classes, normalize=normalize,
        )  # fmt: skip
        if on_corrupt not in ON_CORRUPT:
            raise CnnlabError(
                f"data.on_corrupt={on_corrupt!r}: expected skip (leave out undecodable images "
                "with a warning that lists them) or error (stop before training)."
            )
        self.root = Path(root).expanduser()
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.samples_per_class, self.on_corrupt = samples_per_class, on_corrupt
        self.skipped: list[Path] = []

    def _scan(
        self, folder: Path, class_names: list[str] | None = None
    ) -> tuple[list[Path], list[int], list[str]]:
        """``scan`` with the class filter applied and corrupt files skipped or reported."""
        paths, labels, names = scan(folder, class_names)
        if class_names is None:
            mapping = self.select_classes(names)
            kept = [(p, mapping[y]) for p, y in zip(paths, labels, strict=True) if y in mapping]
        else:  # val/ and test/ folders follow the training folder's (already filtered) classes
            kept = list(zip(paths, labels, strict=True))
        bad = find_corrupt([p for p, _ in kept])
        if bad:
            listed = "; ".join(f"{p} ({why})" for p, why in bad[:LISTED])
            more = f" and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
            if self.on_corrupt == "error":
                raise CnnlabError(
                    f"{len(bad)} image(s) under {folder} cannot be decoded: {listed}{more}. "
                    "Replace or delete them, or skip them with data.on_corrupt=skip."
                )
            log.warning("Skipping %d undecodable image(s): %s%s", len(bad), listed, more)
            bad_paths = {p for p, _ in bad}
            self.skipped += sorted(bad_paths)
            kept = [(p, y) for p, y in kept if p not in bad_paths]
        return [p for p, _ in kept], [y for _, y in kept], names

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
        paths, labels, _ = self._scan(train_root)
        if not paths:
            raise CnnlabError(
                f"data.root={str(self.root)!r} holds no images: expected root/<class>/<image> or "
                f"root/train/<class>/<image> with extensions {', '.join(EXTENSIONS)}."
            )
        splits = {}
        positions = list(range(len(paths)))
        share_left = 1.0  # fractions are of the whole tree, not of what is left
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            folder = self.root / split
            if has_train_dir and folder.is_dir():
                split_paths, split_labels, _ = self._scan(folder, self.class_names)
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
        return channel_stats(self.sample_images(STATS_SAMPLE))
