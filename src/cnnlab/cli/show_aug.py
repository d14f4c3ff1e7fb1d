"""``cnnlab-show-aug``: a PNG grid of training images and augmented versions of them, for any
``augmentation=`` and ``data=`` choice; and the callback that logs the same grid to TensorBoard
or W&B when training starts."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import save_image

from cnnlab.augment.pipeline import Preprocess, as_augmentation
from cnnlab.augment.preview import REPEATS, augmentation_grid
from cnnlab.cli.common import exit_with, print_written
from cnnlab.config.schema import register, validate
from cnnlab.errors import CnnlabError
from cnnlab.paths import config_dir

register()


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
        exit_with(e)
    preprocess = Preprocess(datamodule.channels, datamodule.image_size)
    grid = augmentation_grid(augmentation, images, labels, preprocess, REPEATS)
    choices = HydraConfig.get().runtime.choices
    path = Path(cfg.paths.output_dir) / "augmentation.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    print(
        f"augmentation={choices.get('augmentation')} data={choices.get('data')}: first row the "
        f"original images, then {REPEATS} augmented versions of them."
    )
    print_written(path)


if __name__ == "__main__":
    main()
