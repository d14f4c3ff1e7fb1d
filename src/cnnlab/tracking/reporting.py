"""What a run reports to its experiment loggers (W&B, TensorBoard, MLflow) beyond the metrics
Lightning logs: the full resolved config with the config-group choices, the model's size (params,
MACs), and after testing the per-class accuracy, the confusion matrix and a grid of misclassified
test images. The two figures are also saved as PNGs in the run dir when one of those loggers is
on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import OmegaConf
from PIL import Image
from rich.console import Console
from rich.table import Table

from cnnlab.errors import CnnlabError
from cnnlab.tracking.plots import confusion_figure, misclassified_figure, rgb
from cnnlab.tracking.profile import summarize

# Image sizes tried, smallest first, to tell a user whose images a network shrinks to nothing
# which size it needs (GoogLeNet's 32x downsampling and 3x3 pools need more than 28 px).
SIZES = (32, 48, 64, 96, 128, 160, 224, 299)


def model_cost(module: L.LightningModule) -> dict[str, int]:
    """Parameters and multiply-accumulates of the model of a ClassificationModule, for one image
    of the size its preprocessing gives the model. The first forward pass of a run: a model
    that cannot take images of that size fails here with the smallest size it takes."""
    size, channels = module.preprocess.image_size, module.preprocess.channels
    try:
        _, params, macs = summarize(module.model, (channels, size, size))
    except RuntimeError as e:
        larger = next((s for s in SIZES if s > size and _runs(module.model, channels, s)), None)
        if larger is None:
            raise
        raise CnnlabError(
            f"data.image_size={size}: {type(module.model).__name__} cannot take {size} px "
            f"images ({str(e).splitlines()[0]}); the smallest of {', '.join(map(str, SIZES))} "
            f"px it takes is {larger}: set data.image_size={larger} or more (images are resized "
            "to it), or pick a model for small images."
        ) from None
    return {"params": params, "macs": macs}


def _runs(model: torch.nn.Module, channels: int, size: int) -> bool:
    try:
        summarize(model, (channels, size, size))
    except RuntimeError:
        return False
    return True


def choices() -> dict[str, str]:
    """The option chosen in each config group (model=..., augmentation=...), for grouping runs."""
    if not HydraConfig.initialized():
        return {}
    picked = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in picked.items() if not k.startswith("hydra")}


def log_image(logger: Logger, key: str, image: np.ndarray, step: int) -> None:
    if isinstance(logger, WandbLogger):
        logger.log_image(key, [image], step=step)
    elif isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, image, step, dataformats="HWC")
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, image, artifact_file=f"{key}.png")


IMAGE_LOGGERS = (WandbLogger, TensorBoardLogger, MLFlowLogger)


class ExperimentReport(L.Callback):
    """Log the run's config and model size when fitting starts, and its test report (per-class
    accuracy, confusion matrix, ``misclassified`` wrongly predicted test images) after testing
    to the loggers that take images, saving the figures in the run dir as well."""

    def __init__(self, misclassified: int = 32) -> None:
        self.misclassified = misclassified
        self.wrong: list[tuple[torch.Tensor, int, int]] = []
        self.loggers: list[Logger] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        config: dict[str, Any] = dict(getattr(pl_module, "run_config", None) or {})
        hparams = {
            **config,
            "choices": choices(),
            "model_summary": model_cost(pl_module),
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
            if isinstance(logger, TensorBoardLogger):
                # Without metrics TensorBoard's HParams tab stays empty: show the config as text.
                text = OmegaConf.to_yaml(hparams).replace("\n", "\n    ")
                logger.experiment.add_text("config", "    " + text, 0)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wrong = []
        # Drawing the figures costs about a second: only for loggers that show them.
        self.loggers = [lg for lg in trainer.loggers if isinstance(lg, IMAGE_LOGGERS)]

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self.loggers or len(self.wrong) >= self.misclassified:
            return
        x, y = batch  # preprocessed, as test_step saw it
        predicted = pl_module(x).argmax(dim=1)
        for i in (predicted != y).nonzero().flatten()[: self.misclassified - len(self.wrong)]:
            self.wrong.append((x[i].float().cpu(), int(y[i]), int(predicted[i])))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = getattr(pl_module, "test_report", None)
        if not report or not self.loggers or trainer.global_rank != 0:
            return
        names = report["class_names"]
        step = trainer.global_step
        figures = {
            "confusion_matrix": confusion_figure(
                report["confusion_matrix"], names, "test confusion matrix"
            )
        }
        if self.wrong:
            figures["misclassified"] = misclassified_figure(
                [image for image, _, _ in self.wrong],
                [f"{names[t]} -> {names[p]}" for _, t, p in self.wrong],
            )
        run_dir = Path(trainer.default_root_dir)
        per_class = {f"test_acc_class/{k}": v for k, v in report["per_class_acc"].items()}
        images = {key: rgb(fig) for key, fig in figures.items()}
        for key, image in images.items():
            Image.fromarray(image).save(run_dir / f"{key}.png")
        for logger in self.loggers:
            logger.log_metrics(per_class, step=step)
            for key, image in images.items():
                log_image(logger, key, image, step)


def print_summary(results: dict[str, Any]) -> None:
    table = Table(title=f"cnnlab run: {results.get('name', '')} ({results['status']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "test_acc",
        "test_acc_tta",
        "test_acc_top5",
        "test_loss",
        "best_val_acc",
        "epochs",
        "params",
    ):
        value = results.get(key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isnan(value):
            value = f"{value:.4f}"
        table.add_row(key, str(value))
    table.add_row("wall_time_s", f"{results['wall_time_s']:.1f}")
    console = Console(soft_wrap=True)
    console.print(table)
    # On a line of its own, so that it is never cut and can be copied.
    console.print(f"run_dir: {results['run_dir']}", highlight=False)
