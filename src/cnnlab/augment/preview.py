"""A grid of training images and augmented versions of them, and the callback that logs the
grid to TensorBoard or W&B when training starts (``cnnlab-show-aug`` writes it as a PNG)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid

from cnnlab.augment.mixing import _Mix
from cnnlab.augment.pipeline import Augmentation, PerSample, Preprocess

REPEATS = 4


def augmentation_grid(
    augmentation: Augmentation,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: Preprocess,
    repeats: int = 4,
) -> torch.Tensor:
    """A (3, H, W) image in [0, 1]: the uint8 ``images`` in the first row, then ``repeats`` rows
    of augmented versions, produced the way training produces them (``where`` included)."""
    device = preprocess.mean.device
    rows = [preprocess.to_unit_float(images.to(device))]
    image_ops = [op for op in augmentation.ops.values() if not isinstance(op, _Mix)]
    for _ in range(repeats):
        x = images
        if augmentation.where == "per_sample" and image_ops:
            x = torch.stack([PerSample(image_ops)(image) for image in images])
        x, _ = augmentation(preprocess.to_unit_float(x.to(device)), labels.to(device))
        rows.append(x)
    grid = torch.cat(rows).clamp(0, 1).expand(-1, 3, -1, -1).cpu()
    return make_grid(grid, nrow=len(images), padding=2, pad_value=1.0)


class AugmentationPreview(Callback):
    """Logs the augmentation grid of ``n`` training images as an image when training starts, to
    the loggers that take images (TensorBoard, W&B); does nothing without one."""

    def __init__(self, n: int = 8, repeats: int = 3) -> None:
        self.n, self.repeats = n, repeats

    def on_train_start(self, trainer, pl_module) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
        datamodule = trainer.datamodule
        if not loggers or datamodule is None or trainer.global_rank != 0:
            return
        pick = torch.arange(min(self.n, len(datamodule.train_set)))
        images, labels = datamodule.train_set.images_and_labels(pick)
        with torch.random.fork_rng(devices=[]):  # leave the training's random stream alone
            grid = augmentation_grid(
                pl_module.augmentation, images, labels, pl_module.preprocess, self.repeats
            )
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_image("augmentation", grid, trainer.global_step)
            else:
                lg.log_image("augmentation", [grid])
