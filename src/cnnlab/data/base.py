"""What every cnnlab data module shares: splits, subsets, statistics and fast in-memory batches."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor; a batch is one indexing operation.

    DataLoader calls ``__getitems__`` with the whole batch of indices, which replaces per-sample
    indexing and collation (the dominant cost for 28x28 images) by a single gather.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        self.images, self.labels = images.contiguous(), labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx]


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


def split_indices(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into (n - holdout) and holdout indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Positions of ``per_class`` seeded random examples of each class (all of a smaller class)."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique():
        where = (labels == c).nonzero().flatten()
        picks.append(where[torch.randperm(len(where), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), in [0, 1] units."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].double().div_(255).transpose(0, 1).flatten(1)
        total += x.sum(1)
        total_sq += x.square().sum(1)
    count = images.numel() / channels
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


class ImageDataModule(L.LightningDataModule):
    """Base class: subclasses fill ``train_set``, ``val_set``, ``test_set``, ``class_names`` and
    ``mean``/``std`` in ``setup``. ``channels`` and ``image_size`` say what the model receives;
    the module's preprocessing converts and resizes the stored images to match."""

    # (channels, size) of the images as the data set stores them, if fixed (MNIST: 1, 28); None
    # for data sets that decode straight to ``channels`` and ``image_size``.
    stored_format: tuple[int, int] | None = None

    def __init__(
        self,
        num_classes: int,
        channels: int,
        image_size: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.class_names: list[str] = []
        self.mean: list[float] = []
        self.std: list[float] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not prepared this split")
        in_memory = isinstance(dataset, TensorImages)
        return ResumableLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(len(dataset), self.seed) if shuffle else None,
            drop_last=shuffle and len(dataset) > batch_size,
            num_workers=self.num_workers,
            collate_fn=keep_batch if in_memory else None,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
