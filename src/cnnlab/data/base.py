"""What every cnnlab data module shares: splits, subsets, statistics and fast in-memory batches."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.images import EncodedBatch
from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

# A per-sample augmentation: one uint8 image (C, H, W) in, one out (see cnnlab.augment.pipeline).
Transform = Callable[[torch.Tensor], torch.Tensor]


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor; a batch is one indexing operation.

    DataLoader calls ``__getitems__`` with the whole batch of indices, which replaces per-sample
    indexing and collation (the dominant cost for 28x28 images) by a single gather.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        self.images, self.labels = images.contiguous(), labels.long()
        self.transform: Transform | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]

    def images_and_labels(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored images (not augmented) and labels at ``indices``."""
        return self.images[indices], self.labels[indices]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        images = self.images[idx]
        if self.transform is not None:
            images = torch.stack([self.transform(image) for image in images])
        return images, self.labels[idx]


class EpochShuffle(Sampler[int]):
    """A new random order each epoch, drawn from ``seed`` and the epoch number alone (Lightning
    calls ``set_epoch``), so that a resumed run sees the very order the interrupted one saw."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())


class BalancedSampler(EpochShuffle):
    """As many draws per epoch as there are images, with replacement, each class equally likely
    and each image equally likely within its class: a rare class is seen as often as a common
    one. Seeded by ``seed`` and the epoch alone, like :class:`EpochShuffle`, so a resumed run
    draws the same images again."""

    def __init__(self, labels: torch.Tensor, seed: int) -> None:
        super().__init__(len(labels), seed)
        counts = torch.bincount(labels).double()
        self.weights = (1 / counts)[labels]

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.multinomial(self.weights, self.size, True, generator=gen).tolist())


SAMPLERS = ("balanced",)


def draw_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one image's random crop and augmentation: the run's seed, the epoch and the
    draw's position in it (or, for shards, the item's index)."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + position


@contextlib.contextmanager
def seeded(key: int | None):
    """Torch's CPU generator seeded with ``key`` inside (and left as it was outside); nothing
    changes for ``None``. A DataLoader worker's own stream depends on when the workers started,
    which a resumed run changes; a seed per image does not."""
    if key is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        # The CPU generator alone: torch.manual_seed would also queue a CUDA seeding and record a
        # stack trace for it, per image.
        torch.default_generator.manual_seed(key)
        yield


class KeyedDraws(Sampler):
    """``sampler``'s draws as (index, key) pairs, the key from :func:`draw_seed`: the data set
    crops and augments each draw under its own seed, so that a run resumed mid-epoch, with any
    number of workers, crops every image as the uninterrupted run did (an image drawn twice in
    an epoch, by the balanced sampler, gets two crops)."""

    def __init__(self, sampler: EpochShuffle, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        for position, index in enumerate(self.sampler):
            yield index, draw_seed(self.seed, epoch, position)


def default_workers() -> int:
    """DataLoader workers for data sets decoded from files: one per core this process may use,
    at most 8 (beyond that, workers mostly wait for each other on a machine's memory bus)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


class ResumableLoader(DataLoader):
    """A DataLoader that can stop in the middle of an epoch and continue after the last batch
    it delivered: Lightning stores ``state_dict()`` in every checkpoint and hands it back to
    ``load_state_dict`` when a run resumes mid-epoch. The sampler must give the same order again
    (:class:`EpochShuffle`, or Lightning's seeded DistributedSampler)."""

    _delivered = 0
    _skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._delivered = 0
        for i, batch in enumerate(super().__iter__()):
            if i < skip:
                # Fetched and dropped: sampler and workers advance exactly as they did before.
                continue
            self._delivered = i + 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": self._delivered}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = state["batches"]


def keep_batch(batch):
    """Collate function for datasets whose ``__getitems__`` already returns a batch."""
    return batch


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside: set-up is thousands of tiny tensor operations, each of
    which a thread pool only delays, by seconds in all on a busy machine (measured: a
    100k-image folder's cached set-up took 1-12 s with two threads, 0.2 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def split_indices(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into (n - holdout) and holdout indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def per_class_subset(
    labels: torch.Tensor, per_class: int | Sequence[int], seed: int
) -> torch.Tensor:
    """Positions of ``per_class`` seeded random examples of each class (all of a smaller class);
    a list gives each class its own count (class 0 first), e.g. to make an imbalanced set."""
    gen = torch.Generator().manual_seed(seed)
    counts = per_class if isinstance(per_class, Sequence) else None
    if counts is not None and len(counts) <= int(labels.max()):
        raise CnnlabError(
            f"data.samples_per_class={list(counts)}: one count per class expected, "
            f"{int(labels.max()) + 1} of them."
        )
    picks = []
    for c in labels.unique():
        where = (labels == c).nonzero().flatten()
        n = per_class if counts is None else counts[int(c)]
        picks.append(where[torch.randperm(len(where), generator=gen)[:n]])
    return torch.cat(picks).sort().values


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions split so that ``fraction`` of each class (at least one image if the class has
    two or more) goes to the second list."""
    gen = torch.Generator().manual_seed(seed)
    labels_t = torch.as_tensor(labels)
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


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), in [0, 1] units.

    From each channel's histogram of the 256 values: exact, and an order of magnitude faster than
    summing the pixels as floats, which took 1.5 s of a Fashion-MNIST run's start-up."""
    counts = torch.stack(
        [torch.bincount(images[:, c].flatten(), minlength=256) for c in range(images.shape[1])]
    ).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    count = counts.sum(1)
    mean = counts @ values / count
    std = (counts @ values.square() / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def system_datasets_dir() -> Path:
    """Where data set packages install their files: $CNNLAB_DATASETS_DIR, default Debian's
    /usr/share/datasets."""
    return Path(os.environ.get("CNNLAB_DATASETS_DIR", "/usr/share/datasets"))


# data.normalize: whose statistics normalise the inputs.
NORMALIZE = ("pretrained", "dataset")


class ImageDataModule(L.LightningDataModule):
    """Base class: subclasses fill ``train_set``, ``val_set``, ``test_set``, ``class_names`` and
    ``mean``/``std`` in ``setup``. ``channels`` and ``image_size`` say what the model receives;
    the module's preprocessing converts and resizes the stored images to match."""

    # (channels, size) of the images as the data set stores them, if fixed (MNIST: 1, 28); None
    # for data sets that decode straight to ``channels`` and ``image_size``.
    stored_format: tuple[int, int] | None = None
    # Where images are decoded: cpu (the DataLoader's workers) or gpu (batches on the device).
    decode = "cpu"

    def __init__(
        self,
        num_classes: int,
        channels: int,
        image_size: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
        classes: Sequence[int] | None = None,
        sampler: str | None = None,
        normalize: str = "pretrained",
    ) -> None:
        super().__init__()
        if sampler is not None and sampler not in SAMPLERS:
            raise CnnlabError(
                f"data.sampler={sampler!r}: expected null (each image once per epoch, shuffled) "
                "or balanced (every class equally often, drawn with replacement)."
            )
        self.sampler = sampler
        if normalize not in NORMALIZE:
            raise CnnlabError(
                f"data.normalize={normalize!r}: expected pretrained (a model that starts from "
                "pretrained weights gets inputs normalised with the statistics those weights "
                "were trained with, other models the data set's) or dataset (the data set's "
                "statistics in any case)."
            )
        self.normalize = normalize
        self.classes = list(classes) if classes is not None else None
        if self.classes is not None and len(self.classes) != num_classes:
            raise CnnlabError(
                f"data.classes={self.classes} keeps {len(self.classes)} classes but "
                f"data.num_classes={num_classes}. Leave data.num_classes at its default (it "
                "follows data.classes) or set it to the number of classes kept."
            )
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.class_names: list[str] = []
        self.mean: list[float] = []
        self.std: list[float] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def select_classes(self, all_names: Sequence[str]) -> dict[int, int]:
        """Map from the data set's labels to the model's, after checking ``classes`` and
        ``num_classes`` against the ``all_names`` the data set has; sets ``class_names``."""
        total = len(all_names)
        if self.classes is None:
            if total != self.num_classes:
                raise CnnlabError(
                    f"data.num_classes={self.num_classes} but the data set has {total} classes "
                    f"({', '.join(all_names)}). Set data.num_classes={total}, or keep some "
                    "classes with data.classes=[i, j, ...] (labels are then re-indexed)."
                )
            self.class_names = list(all_names)
            return {c: c for c in range(total)}
        bad = [c for c in self.classes if not 0 <= c < total]
        if bad or len(set(self.classes)) != len(self.classes):
            raise CnnlabError(
                f"data.classes={self.classes}: expected distinct class indices in 0..{total - 1} "
                f"({', '.join(f'{i}={n}' for i, n in enumerate(all_names))})."
            )
        self.class_names = [all_names[c] for c in self.classes]
        return {c: i for i, c in enumerate(self.classes)}

    def filter_labels(
        self, labels: torch.Tensor, all_names: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions kept, their re-indexed labels) under ``classes``."""
        mapping = self.select_classes(all_names)
        lookup = torch.full((len(all_names),), -1, dtype=torch.long)
        lookup[list(mapping)] = torch.tensor(list(mapping.values()))
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(all_names):
            raise CnnlabError(
                f"The data set's labels run from {int(labels.min())} to {int(labels.max())}, "
                f"but it names {len(all_names)} classes: its files are damaged or not what "
                f"{type(self).__name__} reads."
            )
        new = lookup[labels.long()]
        keep = (new >= 0).nonzero().flatten()
        return keep, new[keep]

    def set_train_transform(self, transform: Transform | None) -> None:
        """Augment each training image in the DataLoader (workers) instead of on the device."""
        self.check_train_transform(transform)
        self.train_set.transform = transform

    def check_train_transform(self, transform: Transform | None) -> None:
        if transform is not None and self.decode == "gpu":
            raise CnnlabError(
                "augmentation.where=per_sample augments each image in the DataLoader's workers, "
                "but with data.decode=gpu they hold JPEG bytes, decoded on the device after "
                "them: use augmentation.where=batched (the default, on the device) or "
                "data.decode=cpu."
            )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Lightning's hook between the loader and the model: a batch of JPEG bytes
        (``data.decode=gpu``) is decoded and cropped on ``device`` here."""
        if isinstance(batch, (tuple, list)) and isinstance(batch[0], EncodedBatch):
            images, source, found = batch[0].decode(device)
            self.unreadable(found)
            batch = (images, batch[1][source])
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def unreadable(self, found: Sequence[tuple[str, str]]) -> None:
        """(name, reason) of the images that no decoder read on the device."""
        if found:
            listed = "; ".join(f"{name} ({why})" for name, why in found)
            raise CnnlabError(f"{len(found)} image(s) cannot be decoded: {listed}.")

    @property
    def skipped_files(self) -> dict[str, str]:
        """{path: reason} of the unreadable files this data set left out (files on disk)."""
        return {}

    def class_counts(self) -> torch.Tensor:
        """Training images per class (the inverse-frequency class weights come from these)."""
        return torch.bincount(self.train_set.labels, minlength=self.num_classes)

    def sample_images(self, n: int) -> torch.Tensor:
        """Up to ``n`` seeded random training images, uint8 (n, C, H, W) as stored."""
        return self.sample_batch(n)[0]

    def sample_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` seeded random training images (uint8, not augmented) and their labels."""
        data = self.train_set
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed))[:n]
        return data.images_and_labels(pick)

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not prepared this split")
        sampler = None
        if shuffle:
            balanced = self.sampler == "balanced"
            sampler = (
                BalancedSampler(dataset.labels, self.seed)
                if balanced
                else EpochShuffle(len(dataset), self.seed)
            )
        return self.make_loader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=shuffle and len(dataset) > batch_size,
            num_workers=self.num_workers,
            collate_fn=keep_batch if hasattr(dataset, "__getitems__") else None,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def make_loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return ResumableLoader(dataset, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


class InMemoryImages(ImageDataModule):
    """A data set small enough to hold as uint8 tensors. Subclasses ``load()`` the training and
    test images with their labels and name ``class_names_``; this class filters classes,
    carves the validation split (``val_size`` seeded random training images), subsets the
    training split and computes the normalisation statistics from it."""

    class_names_: tuple[str, ...] = ()

    def __init__(
        self,
        num_classes: int,
        channels: int,
        image_size: int,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        samples_per_class: int | Sequence[int] | None,
        num_workers: int,
        seed: int,
        classes: Sequence[int] | None,
        sampler: str | None = None,
        normalize: str = "pretrained",
    ) -> None:
        super().__init__(
            num_classes, channels, image_size, batch_size, eval_batch_size, num_workers, seed,
            classes, sampler, normalize,
        )  # fmt: skip
        self.val_size, self.samples_per_class = val_size, samples_per_class
        self.select_classes(self.class_names_)  # a bad data.classes fails before any reading

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train images, train labels, test images, test labels); images uint8 (N, [C,] H, W)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_x, train_y, test_x, test_y = self.load()
        keep, train_y = self.filter_labels(train_y, self.class_names_)
        train_x = train_x[keep]
        keep, test_y = self.filter_labels(test_y, self.class_names_)
        test_x = test_x[keep]
        if not 0 < self.val_size < len(train_y):
            raise CnnlabError(
                f"data.val_size={self.val_size}: expected 1..{len(train_y) - 1}, the number of "
                "training images (of the classes kept) less one."
            )
        train_idx, val_idx = split_indices(len(train_y), self.val_size, self.seed)
        if self.samples_per_class:
            train_idx = train_idx[
                per_class_subset(train_y[train_idx], self.samples_per_class, self.seed)
            ]
        self.train_set = TensorImages(train_x[train_idx], train_y[train_idx])
        self.val_set = TensorImages(train_x[val_idx], train_y[val_idx])
        self.test_set = TensorImages(test_x, test_y)
        self.mean, self.std = channel_stats(self.train_set.images)
        log.info(
            "%s: %d classes, %d train / %d val / %d test images",
            type(self).__name__,
            self.num_classes,
            len(self.train_set),
            len(self.val_set),
            len(self.test_set),
        )
