"""The LightningModule that trains any classifier of the model zoo."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from cnnlab.augment.pipeline import Preprocess, as_augmentation
from cnnlab.augment.resolution import ResolutionRamp
from cnnlab.augment.tta import tta_mode, tta_probs
from cnnlab.config.schema import TTAMode
from cnnlab.data.spec import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.models.weights import InputStats
from cnnlab.optim.factory import build_optimizer, build_scheduler, lightning_scheduler
from cnnlab.training.compat import attached_trainer, logs_this_step
from cnnlab.training.convergence import epochs_read, planned_epochs
from cnnlab.transfer.feature_cache import FeatureCache

# torch.compile's modes: it checks the name only when the model first runs, deep in a step.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

log = logging.getLogger(__name__)


def split_outputs(out) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(main logits, auxiliary logits): a model with auxiliary classifiers (GoogLeNet, Inception v3)
    returns a tuple in training mode, the main logits first."""
    if isinstance(out, (tuple, list)):
        return out[0], tuple(out[1:])
    return out, ()


def inverse_frequency(counts: torch.Tensor) -> torch.Tensor:
    """Class weights n / (k * n_c) for the k classes present (scikit-learn's "balanced"): on
    average over the training images a weight is 1, so the learning rate keeps its meaning.
    Classes without images get 0."""
    counts = counts.double()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


def macro_metrics(num_classes: int) -> dict[str, nn.Module]:
    """Class-averaged metrics, each class counting alike however many images it has (next to
    micro accuracy, which a large class dominates)."""
    return {
        "acc_macro": MulticlassAccuracy(num_classes, average="macro"),
        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
        "recall_macro": MulticlassRecall(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
    }


def epochs_ahead(trainer: L.Trainer) -> int | None:
    """How many epochs the trainer's fit runs (:func:`planned_epochs`); None where a callback
    may end it sooner (early stopping, a time limit)."""
    if trainer.early_stopping_callbacks or any(isinstance(c, Timer) for c in trainer.callbacks):
        return None
    return planned_epochs(trainer.max_epochs, trainer.max_steps, steps_per_epoch(trainer))


def steps_per_epoch(trainer: L.Trainer) -> float:
    """Optimizer steps in an epoch of the trainer's fit (inf where its length is not known): the
    optimizer also steps after an epoch's last, incomplete accumulation."""
    batches = trainer.num_training_batches
    return (
        math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else batches
    )


def plain_state_dict(state_dict: dict) -> dict:
    """``state_dict`` without the ``_orig_mod.`` that a model wrapped by ``torch.compile(model)``
    puts into its keys (checkpoints from other code, or from older cnnlab versions)."""
    return {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}


class ClassificationModule(L.LightningModule):
    """Cross-entropy training of ``model`` with optional label smoothing and auxiliary losses.

    Batches arrive as uint8 images; ``on_after_batch_transfer`` converts, augments (training only)
    and normalises them on the device. Metrics are torchmetrics objects updated on the device and
    reduced once per epoch, so logging adds no host synchronisation to a training step.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSpec,
        optimizer: DictConfig,
        scheduler: DictConfig,
        label_smoothing: float = 0.0,
        aux_loss_weight: float = 0.3,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        augmentation: nn.Module | None = None,
        tta: str | TTAMode = TTAMode.none,
        callbacks: Sequence[L.Callback] = (),
        lr_scales: Mapping[str, float] | None = None,
        feature_cache: FeatureCache | None = None,
        run_config: dict | None = None,
        class_weights: str | list[float] | None = None,
        input_stats: InputStats | None = None,
        progressive_resize: Mapping | None = None,
        probe_images: int = 0,
        probe_every_epoch: bool = False,
    ) -> None:
        """``callbacks``, ``lr_scales`` (per parameter name) and ``feature_cache`` come from the
        transfer strategy's plan (cnnlab.transfer.strategies.prepare); ``run_config``, the
        resolved config, goes into every checkpoint, which the trained-model commands rebuild
        the run from. ``probe_images`` fixed training images are evaluated in inference mode
        after the training epochs the convergence rule reads (cnnlab.training.convergence), or
        after every one with ``probe_every_epoch``."""
        super().__init__()
        self.model = model
        num_classes = data.num_classes
        self.preprocess = Preprocess(data.channels, data.image_size)
        if data.mean:
            self.preprocess.set_stats(data.mean, data.std)
        self.augmentation = as_augmentation(augmentation)
        self.resolution = (
            None
            if progressive_resize is None
            else ResolutionRamp.of(progressive_resize, data.image_size)
        )
        self.tta = tta_mode(tta)
        # Those of the pretrained weights the model starts from: data.normalize=pretrained uses
        # them instead of the data set's.
        self.input_stats = input_stats
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.label_smoothing, self.aux_loss_weight = label_smoothing, aux_loss_weight
        self.channels_last = channels_last
        self.num_classes = num_classes
        self.class_names = list(data.class_names) or [str(i) for i in range(num_classes)]
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        # No NaN check: torchmetrics' check reads the loss on the host (a sync every step); a NaN
        # loss should show in the epoch mean; StopOnNonFiniteLoss ends such a run.
        self.train_loss = MeanMetric(nan_strategy="disable")
        # Every finished epoch's mean training loss, for the convergence rule; checkpoints keep
        # it, so a resumed run is judged on all its epochs.
        self.epoch_losses: list[float] = []
        # The probe's images (uint8, as stored) and labels, drawn when fitting starts; and its
        # [loss, accuracy, images] after each finished epoch (None where it did not run), kept
        # alike.
        self.probe_images, self.probe_every_epoch = probe_images, probe_every_epoch
        self.probe_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.train_eval: list[list[float] | None] = []
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro")
        # Top-5 accuracy is only informative with more than five classes to choose from.
        self.top5 = num_classes > 5
        if self.top5:
            self.val_acc_top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")
            self.test_acc_top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.test_per_class = MulticlassAccuracy(num_classes, average=None)
        self.val_macro = nn.ModuleDict(macro_metrics(num_classes))
        self.test_macro = nn.ModuleDict(macro_metrics(num_classes))
        self.class_weights = class_weights
        # Not persistent: "auto" weights come from the data at every fit, and checkpoints stay
        # loadable whatever the weights were.
        self.register_buffer("loss_weight", self._fixed_weights(class_weights), persistent=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_report: dict = {}
        self.transfer_callbacks = list(callbacks)
        self.lr_scales = dict(lr_scales or {})
        self.feature_cache = feature_cache
        self.run_config = run_config
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile_mode not in COMPILE_MODES:
            raise CnnlabError(
                f"module.compile_mode={compile_mode!r}: expected one of {', '.join(COMPILE_MODES)} "
                "(torch.compile's modes; reduce-overhead captures CUDA graphs on a GPU)."
            )
        if compile:
            # In place: the state dict keeps the plain model's keys (torch.compile(model) would
            # prefix them with _orig_mod.), so checkpoints load with compile on or off.
            self.model.compile(mode=compile_mode)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and stage == "fit":
            # Set up now, the data module knows its training split's statistics.
            data = DataSpec.of(datamodule)
            stats = InputStats(list(data.mean), list(data.std), "the training split's")
            normalize = getattr(datamodule, "normalize", "pretrained")
            if self.input_stats is not None and normalize == "pretrained":
                stats = self.input_stats
            self.preprocess.set_stats(stats.mean, stats.std)
            rank_zero_info(f"inputs normalised with the statistics {stats}")
            self.class_names = list(data.class_names) or self.class_names
            self.augmentation.prepare(datamodule)
            if self.probe_images > 0:
                # Seeded by the data module's seed: a resumed run probes the same images.
                self.probe_batch = datamodule.sample_batch(self.probe_images)
            if self.class_weights == "auto":
                self.loss_weight = inverse_frequency(datamodule.class_counts()).to(self.device)
                if getattr(datamodule, "sampler", None) == "balanced":
                    log.warning(
                        "module.class_weights=auto with data.sampler=balanced corrects the "
                        "imbalance twice: rare classes then outweigh common ones; use one."
                    )

    def _fixed_weights(self, class_weights) -> torch.Tensor | None:
        if class_weights is None or class_weights == "auto":
            return None
        if (
            isinstance(class_weights, str)
            or len(class_weights) != self.num_classes
            or any(float(w) < 0 for w in class_weights)
        ):
            raise CnnlabError(
                f"module.class_weights={class_weights!r}: expected null, auto (inverse class "
                f"frequency in the training split) or {self.num_classes} weights >= 0, one per "
                "class."
            )
        return torch.tensor([float(w) for w in class_weights])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        x = self.preprocess.to_unit_float(x)
        if self.training:
            x, y = self.augmentation(x, y)
            if self.resolution is not None:
                x = self.resolution(x, self.current_epoch)
        x = self.preprocess.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def run_model(self, x: torch.Tensor):
        cache = self.feature_cache
        return cache(x) if cache is not None and cache.active else self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_outputs(self.run_model(x))[0]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits, aux = split_outputs(self.run_model(x))
        # Mixup and CutMix give soft targets (N, K), which cross_entropy takes as probabilities.
        smoothing, weight = self.label_smoothing, self.loss_weight
        loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=smoothing)
        for aux_logits in aux:
            aux_loss = F.cross_entropy(aux_logits, y, weight=weight, label_smoothing=smoothing)
            loss = loss + self.aux_loss_weight * aux_loss
        self.train_acc.update(logits.detach(), y.argmax(1) if y.ndim == 2 else y)
        self.train_loss.update(loss.detach())
        # self.log costs about a millisecond of Python per call, a lot next to a small model's
        # step: log the step loss only on the steps the loggers write.
        trainer = attached_trainer(self)
        if trainer is not None and logs_this_step(trainer):
            self.log("train_loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # Computed here, before Lightning computes the logged value and resets the metric (the
        # same value: torchmetrics keeps it until the reset).
        self.epoch_losses.append(float(self.train_loss.compute()))
        self.log("train_loss_epoch", self.train_loss)
        self.log("train_acc", self.train_acc)
        if self.probe_batch is None:
            return
        if not self.probes_this_epoch():
            self.train_eval.append(None)
            return
        loss, acc = self.evaluate_probe()
        self.train_eval.append([loss, acc, len(self.probe_batch[1])])
        # Equal on every process (the same images and weights): the reduction changes nothing.
        self.log("train_eval_loss", loss, sync_dist=True)
        self.log("train_eval_acc", acc, sync_dist=True)

    def probes_this_epoch(self) -> bool:
        """Whether the probe runs after this epoch: after each of the epochs the convergence rule
        reads (the last fifth and the one before; after every epoch, it added 10-37% to the
        training time of the ablations' sets of 1,000-3,000 images); after every epoch when
        asked, or when the run's length is not known in advance (:func:`epochs_ahead`), so
        that whichever epoch ends it, the rule's epochs have been probed."""
        epochs = epochs_ahead(self.trainer)
        if self.probe_every_epoch or epochs is None:
            return True
        return self.current_epoch >= epochs - epochs_read(epochs)

    @torch.no_grad()
    def evaluate_probe(self) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the probe images in inference mode: the fit of the
        training set without the noise of augmentation, dropout and batch statistics, which on
        a small set moves an epoch's running loss by several percent. Each module's mode comes
        back as it was (a frozen BatchNorm stays in inference mode); no random number is drawn,
        so training goes on exactly as without the probe."""
        images, labels = self.probe_batch
        modes = {module: module.training for module in self.modules()}
        self.eval()
        total, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        try:
            chunk = self.probe_chunk
            for start in range(0, len(labels), chunk):
                batch = (images[start : start + chunk], labels[start : start + chunk])
                x, y = self.on_after_batch_transfer(tuple(t.to(self.device) for t in batch), 0)
                logits = self(x).float()
                total += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        finally:
            for module, mode in modes.items():
                module.train(mode)
        return float(total) / len(labels), float(correct) / len(labels)

    @property
    def probe_chunk(self) -> int:
        """Images per forward pass of the probe: the evaluation batch size of the data."""
        trainer = attached_trainer(self)
        return max(1, getattr(trainer and trainer.datamodule, "eval_batch_size", 256))

    def epoch_figures(self) -> dict[str, list]:
        """What the convergence rule reads, per finished epoch: the running training loss and
        the probe's [loss, accuracy, images]. Checkpoints keep both."""
        return {"epoch_losses": self.epoch_losses, "train_eval": self.train_eval}

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        # sync_dist: under DDP the epoch mean over every process's batches (once per epoch).
        loss = F.cross_entropy(logits, y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)
        for name in ("acc_macro", "f1_macro"):
            self.val_macro[name].update(logits, y)
            self.log(f"val_{name}", self.val_macro[name], on_epoch=True)
        if self.top5:
            self.val_acc_top5.update(logits, y)
            self.log("val_acc_top5", self.val_acc_top5, on_epoch=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        for metric in (self.test_acc, self.test_per_class, self.test_confusion):
            metric.update(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("test_acc", self.test_acc, on_epoch=True)
        for name, metric in self.test_macro.items():
            metric.update(logits, y)
            self.log(f"test_{name}", metric, on_epoch=True)
        if self.tta is not TTAMode.none:
            self.test_acc_tta.update(tta_probs(self, x, self.tta), y)
            self.log("test_acc_tta", self.test_acc_tta, on_epoch=True)
        if self.top5:
            self.test_acc_top5.update(logits, y)
            self.log("test_acc_top5", self.test_acc_top5, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        per_class = self.test_per_class.compute().tolist()
        self.test_report = {
            "per_class_acc": dict(zip(self.class_names, per_class, strict=True)),
            "confusion_matrix": self.test_confusion.compute().tolist(),
            "class_names": self.class_names,
        }
        self.test_per_class.reset()
        self.test_confusion.reset()

    def configure_callbacks(self) -> list[L.Callback]:
        return self.transfer_callbacks

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optimizer_cfg, self.lr_scales)
        total = self.trainer.estimated_stepping_batches
        steps = steps_per_epoch(self.trainer)
        per_epoch = max(1, steps) if math.isfinite(steps) else None
        schedule = build_scheduler(optimizer, self.scheduler_cfg, total, per_epoch)
        if schedule is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": lightning_scheduler(schedule, self.scheduler_cfg),
        }

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # cnnlab.optim.schedule.Schedule wraps torch's and timm's schedulers alike.
        scheduler.step(metric)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = plain_state_dict(checkpoint["state_dict"])
        # A resumed scheduler takes the saved state of the checkpoint's scheduler: another kind
        # of schedule, or a one-cycle schedule (which stores its total step count) of another
        # length, would fail deep inside torch, after a long traceback.
        if self.trainer.state.fn != TrainerFn.FITTING:
            return  # testing or predicting from a checkpoint restores the weights alone
        kept = checkpoint.get("cnnlab") or {}
        self.epoch_losses = list(kept.get("epoch_losses", []))
        self.train_eval = [f if f is None else list(f) for f in kept.get("train_eval", [])]
        saved_cfg = kept.get("config") or {}
        saved = saved_cfg.get("scheduler", {})
        # Checkpoints of cnnlab before schedulers by _target_ name theirs by `name`.
        saved = saved.get("_target_", saved.get("name"))
        current = self.scheduler_cfg.get("_target_")
        if saved_cfg and saved != current:
            raise CnnlabError(
                f"resume: the checkpoint was trained with scheduler._target_={saved}, this "
                f"config has scheduler._target_={current}. Resume with the checkpoint's scheduler."
            )
        total = int(self.trainer.estimated_stepping_batches)
        for state in checkpoint.get("lr_schedulers", []):
            steps = (state.get("main") or {}).get("total_steps")
            if steps is not None and steps != total:
                raise CnnlabError(
                    f"resume: the checkpoint's one-cycle schedule spans {steps} steps, this "
                    f"config's {total} (trainer.max_epochs={self.trainer.max_epochs}). Resume "
                    "with the config the checkpoint was trained with, or train with a schedule "
                    "that follows the run's length (scheduler=cosine, step or none)."
                )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cnnlab"] = {
            "class_names": self.class_names,
            "config": self.run_config,
            **self.epoch_figures(),
        }
