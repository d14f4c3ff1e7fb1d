"""``cnnlab-show-aug``: a PNG grid of training images and augmented versions of them, for any
``augmentation=`` and ``data=`` choice; and the callback that logs the same grid to TensorBoard
or W&B when training starts."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from omegaconf import DictConfig
from torchvision.utils import make_grid, save_image

from cnnlab.augment import Augmentation, PerSample, Preprocess, as_augmentation
from cnnlab.config import validate
from cnnlab.errors import CnnlabError
from cnnlab.mixing import _Mix
from cnnlab.train import config_dir

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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    """Write <run dir>/augmentation.png for the composed ``data`` and ``augmentation``."""
    try:
        cfg = validate(cfg)
        torch.manual_seed(cfg.seed)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        augmentation = as_augmentation(instantiate(cfg.augmentation))
        pick = torch.randperm(len(datamodule.train_set))[:8]
        images, labels = datamodule.train_set.images_and_labels(pick)
        augmentation.prepare(datamodule)
    except CnnlabError as e:
        print(f"cnnlab: error: {e}", file=sys.stderr)
        sys.exit(2)
    preprocess = Preprocess(datamodule.channels, datamodule.image_size)
    grid = augmentation_grid(augmentation, images, labels, preprocess, REPEATS)
    choices = HydraConfig.get().runtime.choices
    path = Path(cfg.paths.output_dir) / "augmentation.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    print(
        f"augmentation={choices.get('augmentation')} data={choices.get('data')}: first row the "
        f"original images, then {REPEATS} augmented versions of them.\n{path}"
    )


if __name__ == "__main__":
    main()
