"""Cached features for ``transfer=feature_extract``: the frozen backbone runs once per image.

With the backbone frozen (BatchNorm included) and no augmentation, the head's input for an image
never changes, so the source texts advise computing it once and training the head on the stored
tensors. The cache keys each image by a hash of its preprocessed pixels, which needs no change to
the data modules and stays right whatever the batch order: the training images are computed
before the first epoch, the validation images in the first validation, and looked up after.
The features are those of the backbone in eval mode, as frozen layers are; the head trains as
usual (its dropout too).
"""

from __future__ import annotations

import hashlib
import itertools

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader


class _HeadReached(Exception):
    pass


@torch.no_grad()
def head_input(model: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``head`` (a submodule of ``model``) receives for ``x``, with ``model`` in eval mode;
    the forward pass stops there."""
    captured = []

    def stop(_, args):
        captured.append(args[0])
        raise _HeadReached

    hook = head.register_forward_pre_hook(stop)
    training = model.training
    try:
        model.eval()(x)
    except _HeadReached:
        pass
    finally:
        hook.remove()
        model.train(training)
    return captured[0]


class FeatureCache:
    """``model``'s logits, with the input of its ``head`` module looked up per image. The
    LightningModule runs it instead of the model while it is ``active``: from the start of
    training, once :class:`FeatureCacheCallback` has filled it, to the end of fitting."""

    def __init__(self, model: nn.Module, head: str) -> None:
        self.model, self.head = model, model.get_submodule(head)
        self.rows: dict[bytes, int] = {}
        self.features: list[torch.Tensor] = []
        self.active = False

    def clear(self) -> None:
        self.rows, self.features, self.active = {}, [], False

    def __len__(self) -> int:
        return len(self.features)

    def add(self, x: torch.Tensor) -> list[bytes]:
        """Compute and store the features of the images of ``x`` not seen yet; their keys."""
        pixels = x.detach().cpu().numpy()
        keys = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in pixels]
        new = [i for i, key in enumerate(keys) if key not in self.rows]
        if new:
            for i, row in zip(new, head_input(self.model, self.head, x[new]), strict=True):
                if keys[i] not in self.rows:  # an image may come twice in a batch
                    self.rows[keys[i]] = len(self.features)
                    self.features.append(row)
        return keys

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.add(x)
        return self.head(torch.stack([self.features[self.rows[key]] for key in keys]))


class FeatureCacheCallback(L.Callback):
    """Fills ``cache`` with the whole training set before the first epoch and keeps it active
    while fitting; testing runs the whole model."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cache = self.cache
        cache.clear()
        # In order and to the last image: filled lazily, the cache would meet new images in the
        # later epochs too (those that shuffling and drop_last left out), each a backbone run.
        loader = trainer.train_dataloader
        ordered = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            collate_fn=loader.collate_fn,
            generator=torch.Generator(),  # leaves the global random state, hence shuffling, alone
        )
        # limit_train_batches and fast_dev_run train on a few batches: cache no more than those.
        limited = trainer.num_training_batches < len(loader)
        batches = itertools.islice(ordered, trainer.num_training_batches) if limited else ordered
        for images, labels in batches:
            batch = (images.to(pl_module.device), labels)
            cache.add(pl_module.on_after_batch_transfer(batch, 0)[0])
        cache.active = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.cache.clear()
