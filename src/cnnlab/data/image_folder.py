"""Any folder tree of images, one sub-folder per class, like torchvision's ImageFolder.

Set-up lists file names only (cnnlab.data.folder_index, cached in ``paths.cache_dir``); images
are decoded where they are used, in the DataLoader's workers. A file that turns out unreadable
there is replaced in its batch by the next readable one, named in the run log and counted in
``skipped_files``, unless ``on_corrupt=error`` asks to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.base import (
    ImageDataModule,
    KeyedDraws,
    ResumableLoader,
    Transform,
    channel_stats,
    default_workers,
    one_thread,
    per_class_subset,
    seeded,
    stratified_split,
)
from cnnlab.data.folder_index import (
    BAD,
    EXTENSIONS,
    FolderIndex,
    cached_stats,
    class_folders,
    folder_index,
    store_stats,
    verify,
)
from cnnlab.data.images import (
    DECODE_ERRORS,
    Crop,
    EncodedBatch,
    Geometry,
    check_decode,
    check_geometry,
    decode,
    encode,
)
from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

STATS_SAMPLE = 512
ON_CORRUPT = ("skip", "error")
LISTED = 20  # unreadable files named in one message; the rest are counted
REFILL_TRIES = 64  # unreadable files in a row before a batch gives up


class ImageFiles(Dataset):
    """Decodes image files to uint8 tensors (C, size, size) through ``geometry`` (default: the
    whole image squashed to the square). ``paths`` is anything that gives a file path by
    position: a list, or a folder's index with the positions of one split. A batch's indices
    may come as (index, key) pairs (:class:`cnnlab.data.base.KeyedDraws`): each image is then
    cropped and augmented under its key's seed. ``encoded``: batches are
    :class:`cnnlab.data.images.EncodedBatch` (JPEG bytes and crops, decoded on the device)."""

    def __init__(
        self,
        paths: Sequence,
        labels: Sequence[int] | torch.Tensor,
        channels: int,
        image_size: int,
        geometry: Geometry | None = None,
        encoded: bool = False,
    ) -> None:
        self.files, self.labels = paths, torch.as_tensor(labels, dtype=torch.long)
        self.channels, self.encoded = channels, encoded
        self.geometry = geometry or Geometry(image_size, "squash")
        # Statistics and previews see what evaluation sees: no random crop.
        self.eval_geometry = Geometry(
            image_size, self.geometry.resize, crop_pct=self.geometry.crop_pct
        )
        self.transform: Transform | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def paths(self) -> list[Path]:
        return [Path(self.files[i]) for i in range(len(self))]

    def read(self, i: int, geometry: Geometry, draft: bool = False) -> torch.Tensor:
        with open(self.files[i], "rb") as f:
            data = f.read()
        return geometry(decode(data, self.channels, geometry.shortest if draft else None))

    def _load(self, i: int, geometry: Geometry, transform: Transform | None, draft: bool,
              encoded: bool) -> tuple[torch.Tensor, Crop | None]:  # fmt: skip
        if encoded:
            with open(self.files[i], "rb") as f:
                return encode(f.read(), self.channels, geometry)
        image = self.read(i, geometry, draft)
        return (transform(image) if transform else image), None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = self.read(i, self.geometry)
        except DECODE_ERRORS as e:
            raise CnnlabError(f"Cannot decode image {self.files[i]}: {e}") from None
        return (self.transform(image) if self.transform else image), self.labels[i]

    def _batch(self, indices, geometry: Geometry, transform: Transform | None, draft=False,
               encoded=False):  # fmt: skip
        images, crops, names, labels, skipped = [], [], [], [], []
        for draw in indices:
            i, key = draw if isinstance(draw, tuple) else (draw, None)
            for attempt in range(REFILL_TRIES):
                # The next file takes an unreadable one's place: the batch keeps its size and
                # the replacement is the same on every run and in every worker.
                j = (int(i) + attempt) % len(self)
                try:
                    with seeded(key):
                        image, crop = self._load(j, geometry, transform, draft, encoded)
                except DECODE_ERRORS as e:
                    skipped.append((str(self.files[j]), f"{type(e).__name__}: {e}".splitlines()[0]))
                    continue
                images.append(image)
                crops.append(crop)
                names.append(str(self.files[j]))
                labels.append(self.labels[j])
                break
            else:
                raise CnnlabError(
                    f"{REFILL_TRIES} image files in a row cannot be decoded, from "
                    f"{self.files[int(i)]} on (the last: {skipped[-1][1]}). Check the folder."
                )
        if encoded:
            batch = EncodedBatch(images, crops, names, geometry, self.channels)
            return batch, torch.stack(labels), skipped
        return torch.stack(images), torch.stack(labels), skipped

    def __getitems__(self, indices: Sequence[int]):
        """The batch at ``indices`` and the (path, reason) of each unreadable file replaced in
        it; :class:`FileLoader` takes the latter off before the batch goes on."""
        return self._batch(indices, self.geometry, self.transform, encoded=self.encoded)

    def images_and_labels(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded (not augmented, centre-cropped) images and labels at ``indices``."""
        images, labels, _ = self._batch(indices.tolist(), self.eval_geometry, None)
        return images, labels


class Split:
    """The full paths of some of a folder index's files, by position."""

    def __init__(self, index: FolderIndex, positions: np.ndarray) -> None:
        self.index, self.positions = index, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> str:
        return self.index.path(int(self.positions[i]))


class SkipLog:
    """The unreadable files a run met, {path: reason}; each is logged once, when first met."""

    def __init__(self, on_corrupt: str) -> None:
        self.on_corrupt, self.files = on_corrupt, {}

    def add(self, found: Sequence[tuple[str, str]], where: str = "") -> None:
        new = [(p, why) for p, why in found if p not in self.files]
        if not new:
            return
        listed = "; ".join(f"{p} ({why})" for p, why in new[:LISTED])
        more = f" and {len(new) - LISTED} more" if len(new) > LISTED else ""
        if self.on_corrupt == "error":
            raise CnnlabError(
                f"{len(new)} image(s){where} cannot be decoded: {listed}{more}. Replace or "
                "delete them, or skip them with data.on_corrupt=skip."
            )
        log.warning("Skipping %d unreadable image(s)%s: %s%s", len(new), where, listed, more)
        self.files.update(new)


class FileLoader(ResumableLoader):
    """A loader of :class:`ImageFiles` batches that reports the files its workers skipped."""

    def __init__(self, dataset: Dataset, skips: SkipLog, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.skips = skips

    def __iter__(self):
        for images, labels, skipped in super().__iter__():
            self.skips.add(skipped)
            yield images, labels


class ImageFolder(ImageDataModule):
    """Images from ``root``: ``root/train``, ``root/val``, ``root/test`` where they exist, and
    seeded stratified splits of the training images (``val_fraction``, ``test_fraction``) where
    they don't. Normalisation statistics come from a sample of the training folder, cached with
    its file index in ``cache_dir``. ``resize``, ``crop_scale``, ``crop_ratio``, ``crop_pct``
    and ``hflip``: see :class:`cnnlab.data.images.Geometry`. ``decode=gpu``: the workers read
    JPEG files' bytes and draw their crops; batches are decoded and cropped on the device in
    :meth:`transfer_batch_to_device` (other formats are decoded in the workers)."""

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
        samples_per_class: int | list[int] | None = None,
        num_workers: int | None = None,
        seed: int = 0,
        classes: Sequence[int] | None = None,
        normalize: str = "pretrained",
        on_corrupt: str = "skip",
        verify: bool = False,
        resize: str = "crop",
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        crop_pct: float = 0.875,
        hflip: bool = True,
        cache_dir: str | None = None,
        sampler: str | None = None,
        decode: str = "cpu",
    ) -> None:
        super().__init__(
            num_classes, channels, image_size, batch_size, eval_batch_size,
            default_workers() if num_workers is None else num_workers, seed, classes, sampler,
            normalize,
        )  # fmt: skip
        if on_corrupt not in ON_CORRUPT:
            raise CnnlabError(
                f"data.on_corrupt={on_corrupt!r}: expected skip (leave out unreadable images "
                "with a warning that lists them) or error (stop at the first one)."
            )
        check_geometry(resize, crop_pct)
        check_decode(decode)
        self.decode = decode
        self.root = Path(root).expanduser()
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.samples_per_class, self.verify = samples_per_class, verify
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.crop = dict(resize=resize, scale=tuple(crop_scale), ratio=tuple(crop_ratio),
                         crop_pct=crop_pct, hflip=hflip)  # fmt: skip
        self.skips = SkipLog(on_corrupt)

    @property
    def skipped_files(self) -> dict[str, str]:
        return dict(self.skips.files)

    def _index(self, folder: Path, class_names: list[str]) -> FolderIndex:
        index = folder_index(folder, class_names, self.cache_dir)
        if self.verify:
            verify(index, self.channels, self.num_workers or 1, self.cache_dir)
        if empty := index.empty_classes():
            log.warning(
                "%d class folder(s) under %s hold no images: %s. They stay classes (labels keep "
                "their positions) without examples here.", len(empty), folder, ", ".join(empty)
            )  # fmt: skip
        bad = index.bad()
        self.skips.add([(index.path(i), why) for i, why in bad.items()], f" under {folder}")
        return index

    def _files(self, index: FolderIndex, positions, train: bool, mapping=None) -> ImageFiles:
        """The readable files of ``index`` at ``positions`` as a data set; labels re-indexed by
        ``mapping`` (the class filter) where given."""
        positions = np.asarray(positions, dtype=np.int64)
        positions = positions[index.verdicts[positions] != BAD] if len(positions) else positions
        labels = index.labels[positions]
        if mapping is not None:
            lookup = np.full(len(index.classes), -1, dtype=np.int64)
            lookup[list(mapping)] = list(mapping.values())
            labels = lookup[labels]
        geometry = Geometry(self.image_size, train=train, **self.crop)
        return ImageFiles(Split(index, positions), labels, self.channels, self.image_size,
                          geometry, encoded=self.decode == "gpu")  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        with one_thread():
            self._setup()

    def _setup(self) -> None:
        has_train_dir = (self.root / "train").is_dir()
        train_root = self.root / "train" if has_train_dir else self.root
        all_names = class_folders(train_root)
        mapping = self.select_classes(all_names)
        index = self._index(train_root, all_names)
        # Splits are drawn over every listed file, readable or not, so that they are the same
        # whatever a verify pass found; the unreadable ones are then left out of each split.
        kept = np.flatnonzero(np.isin(index.labels, list(mapping)))
        if not len(kept):
            raise CnnlabError(
                f"data.root={str(self.root)!r} holds no images: expected root/<class>/<image> or "
                f"root/train/<class>/<image> with extensions {', '.join(EXTENSIONS)}."
            )
        labels = index.labels[kept].tolist()
        positions = list(range(len(kept)))
        splits, share_left = {}, 1.0  # fractions are of the whole tree, not of what is left
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            folder = self.root / split
            if has_train_dir and folder.is_dir():
                # val/ and test/ follow the training folder's classes (after the filter).
                names = [all_names[c] for c in mapping]
                other = self._index(folder, names)
                splits[split] = self._files(other, np.arange(len(other)), train=False)
            else:
                keep, held = stratified_split(
                    [labels[i] for i in positions], fraction / share_left, self.seed
                )
                share_left -= fraction
                held_at = kept[[positions[i] for i in held]]
                splits[split] = self._files(index, held_at, train=False, mapping=mapping)
                positions = [positions[i] for i in keep]
        if self.samples_per_class:
            chosen = per_class_subset(
                torch.tensor([mapping[labels[i]] for i in positions]),
                self.samples_per_class,
                self.seed,
            )
            positions = [positions[i] for i in chosen.tolist()]
        self.train_set = self._files(index, kept[positions], train=True, mapping=mapping)
        self.val_set, self.test_set = splits["val"], splits["test"]
        log.info(
            "image_folder %s: %d classes, %d train / %d val / %d test images",
            self.root,
            self.num_classes,
            len(self.train_set),
            len(self.val_set),
            len(self.test_set),
        )
        self.mean, self.std = self._stats(index)

    def _stats(self, index: FolderIndex) -> tuple[list[float], list[float]]:
        """Mean and std of a seeded sample of the training folder's images (all classes, so
        that they are the folder's, whatever the split), cached with its index."""
        crop = self.crop
        key = f"{self.channels}x{self.image_size}:{crop['resize']}:{crop['crop_pct']}"
        saved = cached_stats(self.cache_dir, Path(index.root), index.classes, key)
        if saved is not None:
            return saved["mean"], saved["std"]
        pick = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
        files = self._files(index, pick[:STATS_SAMPLE].sort().values.numpy(), train=False)
        # Drafts: statistics of images shrunk in the JPEG decoder differ from the full decode's
        # by less than the spread between samples, at a quarter of the time or less.
        images, _, skipped = files._batch(range(len(files)), files.eval_geometry, None, True)
        self.skips.add(skipped)
        mean, std = channel_stats(images)
        store_stats(self.cache_dir, Path(index.root), index.classes, key,
                    {"mean": mean, "std": std})  # fmt: skip
        return mean, std

    def make_loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        if kwargs.get("sampler") is not None:
            kwargs["sampler"] = KeyedDraws(kwargs["sampler"], self.seed)
        return FileLoader(dataset, self.skips, **kwargs)

    def unreadable(self, found: Sequence[tuple[str, str]]) -> None:
        self.skips.add(found)
