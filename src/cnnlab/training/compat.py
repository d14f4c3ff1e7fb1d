"""Everything cnnlab takes from the internals of Lightning and torchmetrics, in one place.

Each function names the private API it relies on, and tests/test_compat.py pins the behaviour of
each under a test of the same name: an upgrade that changes one fails that test, instead of
exact resume or the step logs, silently. Where a public API does the job it is used instead
(:func:`logs_this_step`). Lightning's Trainer defaults, read without importing Lightning, are
the config layer's business (cnnlab.config.lightning_source, below this layer).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torchmetrics import Metric


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The Trainer running ``module``, None outside one (where ``module.trainer`` raises):
    ``LightningModule._trainer``."""
    return module._trainer


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the loggers write the training step about to run, from public attributes: what
    Lightning's ``trainer._logger_connector.should_update_logs`` decides (the test pins it)."""
    return (trainer.global_step + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop


def save_last_checkpoint(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """Write ``callback``'s last.ckpt now, unless Lightning would not save here (sanity check,
    fast_dev_run, this step already saved): ``ModelCheckpoint._should_skip_saving_checkpoint``,
    ``_save_last_checkpoint`` and ``_monitor_candidates``."""
    if not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def validates_after_this_batch(trainer: L.Trainer) -> bool:
    """Whether Lightning validates when the training batch in progress ends (asked from
    ``on_train_batch_end``, before the loop asks it): ``fit_loop.epoch_loop._should_check_val_fx``
    with ``fit_loop._data_fetcher``."""
    return trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


def _epoch_results(trainer: L.Trainer):
    # The training epoch's values logged with self.log, with their running reductions.
    return trainer.fit_loop.epoch_loop._results


def logged_sums(trainer: L.Trainer) -> dict[str, dict[str, torch.Tensor]]:
    """The running reductions (sums and counts, or extrema) of this epoch's values logged with
    ``self.log``, by key: ``fit_loop.epoch_loop._results`` and its ``ResultMetric`` states."""
    return {k: dict(r.metric_state) for k, r in _epoch_results(trainer).items() if r.is_tensor}


def add_logged_sums(trainer: L.Trainer, sums: dict[str, dict[str, torch.Tensor]]) -> None:
    """Fold ``sums`` from :func:`logged_sums` into this epoch's reductions, as if their steps had
    run in this process. Lightning makes a value's reduction at its first log call: keys not
    logged yet this epoch are left out."""
    logged = _epoch_results(trainer)
    for key, saved in sums.items():
        if key not in logged:
            continue
        result = logged[key]
        if result.meta.is_max_reduction:
            result.value = torch.maximum(result.value, saved["value"])
        elif result.meta.is_min_reduction:
            result.value = torch.minimum(result.value, saved["value"])
        else:
            for name, value in saved.items():
                setattr(result, name, getattr(result, name) + value.to(result.value.device))


def metric_states(module: nn.Module) -> dict[str, dict[str, Any]]:
    """The states of the torchmetrics metrics of ``module`` that have been updated, by module
    name, with their update counts (``Metric._update_count``, which ``compute`` checks)."""
    return {
        name: {**m.metric_state, "_update_count": m.update_count}
        for name, m in module.named_modules()
        if isinstance(m, Metric) and m.update_count
    }


def restore_metric_states(module: nn.Module, states: dict[str, dict[str, Any]]) -> None:
    """Put states from :func:`metric_states` back into the metrics of ``module``."""
    modules = dict(module.named_modules())
    for name, state in states.items():
        for key, value in state.items():
            setattr(modules[name], key, value)


def restore_loader_position(trainer: L.Trainer) -> None:
    """Hand the training loader the position saved in the checkpoint being resumed from. Lightning
    does it only when it makes the training loader after restoring the checkpoint, and
    ``estimated_stepping_batches`` (configure_optimizers) makes it before:
    ``fit_loop._load_combined_loader_states``."""
    trainer.fit_loop._load_combined_loader_states()
