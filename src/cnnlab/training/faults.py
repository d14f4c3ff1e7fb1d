"""Surviving faults: checkpoint files that a kill cannot corrupt, random state that a resumed run
takes up exactly where the interrupted one stopped, and a stop at the first non-finite loss."""

from __future__ import annotations

import errno
import math
import random
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from cnnlab.errors import CnnlabError
from cnnlab.paths import atomic_write
from cnnlab.training.compat import (
    add_logged_sums,
    logged_sums,
    metric_states,
    restore_loader_position,
    restore_metric_states,
    save_last_checkpoint,
    validates_after_this_batch,
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<file>.part`` in the checkpoint's own folder, flushes it to the disk and renames it
    over the checkpoint: a kill, a power cut or a full disk during a save leaves the previous file
    whole. (Lightning's own writer may stage the file in /tmp, and a move across file systems is a
    copy into the target path.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f), fsync=True)
        except (OSError, RuntimeError) as e:
            # torch's zip writer reports a full disk as "unexpected pos", without the errno.
            need, free = tensor_bytes(checkpoint), shutil.disk_usage(path.parent).free
            full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
            if not (full or free < need):
                raise
            raise CnnlabError(disk_full(path, need, free)) from None


def tensor_bytes(tree: Any) -> int:
    """The bytes of the tensors in a checkpoint: about the size of its file."""
    if isinstance(tree, torch.Tensor):
        return tree.nbytes
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


def disk_full(path: Path, need: int, free: int) -> str:
    """The paragraph for a checkpoint save that ran out of space: the disk, the space needed."""
    mount = path.resolve().parent
    while not mount.is_mount():
        mount = mount.parent
    return (
        f"The disk filled up while saving {path}: the file system mounted at {mount} has "
        f"{free / 2**20:.1f} MiB free and the checkpoint needs about {need / 2**20:.1f} MiB. "
        "The previous checkpoints are whole. Free space there (or move the run dir to a larger "
        "disk), then continue the run from its last checkpoint with resume=<run dir>; a "
        "multirun re-run retries the job."
    )


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, rewritten every ``every_n_train_steps`` steps and at the end of every epoch,
    so that a killed run loses at most that many steps. (ModelCheckpoint's own ``save_last``
    writes only when another checkpoint is written, e.g. when the validation accuracy improved.)

    SIGTERM (a scheduler's pre-emption) and a first Ctrl-C stop training at the end of the step
    in progress, with ``last.ckpt`` written at that step, by raising :class:`Interrupted`. (In
    place of Lightning's own SIGTERM handling, which stops without a checkpoint and exits 0.) A
    signal during validation takes effect at the epoch-end save after it; a second Ctrl-C raises
    KeyboardInterrupt at once.

    Nothing is saved at a step that Lightning validates after (the epoch's last step, a
    ``val_check_interval`` step): Lightning resumes such a checkpoint as if its validation had
    run, skipping it, and at the epoch's last step the rest of the run with it. That save, and
    a signal's stop, wait for the end of the validation: the epoch-end save, or the next step's.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 100) -> None:
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps,
            save_top_k=0,
            save_last=True,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self._signal: int | None = None
        self._handlers: dict[int, Any] = {}
        self._every_steps = every_n_train_steps
        self._save_after_validation = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its own handlers (at the start of fit), in the process that
        # trains; signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if self._signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._signal = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if validates_after_this_batch(trainer):
            every = self._every_steps
            self._save_after_validation |= every > 0 and trainer.global_step % every == 0
            return
        if self._save_after_validation:
            save_last_checkpoint(self, trainer)
            self._save_after_validation = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Skipped when a step-triggered save has just written this very state.
        save_last_checkpoint(self, trainer)
        self._save_after_validation = False
        self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        if self._signal is None:
            return
        save_last_checkpoint(self, trainer)
        name = signal.Signals(self._signal).name
        print(
            f"cnnlab: {name} at step {trainer.global_step}: wrote last.ckpt, status interrupted; "
            "resume=auto (or resume=<run dir>) continues from here.",
            flush=True,
        )
        raise Interrupted(128 + self._signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}


class Interrupted(SystemExit):
    """Training stopped by a signal, after last.ckpt was written; the process exits with
    128 + the signal number (143 for SIGTERM, 130 for Ctrl-C), as a process killed by the signal
    reports, which job scripts and schedulers (SLURM's requeue) read as a killed job."""


def rng_states() -> dict[str, Any]:
    """Every random generator training draws from, in types that a weights_only load accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
    }
    if torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(L.Callback):
    """Makes a resumed run continue exactly as if it had not stopped: stores in every checkpoint
    the random generators' states (augmentation, dropout) and the partial sums of this epoch's
    metrics (the train_loss mean, torchmetrics states such as train_acc's), and restores them when
    training resumes. (The data order is the loader's part: cnnlab.data.base.ResumableLoader.)"""

    def __init__(self) -> None:
        self._saved: dict[str, Any] | None = None
        self._sums: dict[str, dict[str, torch.Tensor]] = {}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # The logs on disk then hold everything up to the checkpoint (the CSV logger buffers
        # 100 steps), and a resumed run's logs continue them without a gap.
        for logger in trainer.loggers:
            logger.save()
        checkpoint["exact_resume"] = {
            "rng": rng_states(),
            "sums": logged_sums(trainer),
            "metrics": metric_states(pl_module),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._saved = checkpoint.get("exact_resume")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, before the first batch is drawn, whenever Lightning made the training loader.
        restore_loader_position(trainer)
        if self._saved is None:
            return
        # Restored here, as the first batch is about to be drawn: restoring the checkpoint comes
        # before steps (building the optimizer, the sanity check) that may draw numbers too.
        set_rng_states(self._saved["rng"])
        restore_metric_states(pl_module, self._saved["metrics"])
        self._sums = self._saved["sums"]
        self._saved = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning makes the logged values' accumulators at their first log call, so the sums
        # from before the interruption are added after the first batch of the resumed run.
        if self._sums:
            add_logged_sums(trainer, self._sums)
            self._sums = {}


class StopOnNonFiniteLoss(L.Callback):
    """Stops training with a clear message once the loss is NaN or infinite, and refuses to write a
    checkpoint of non-finite weights, so that the checkpoints keep the last good state.

    The check reads the loss on the host (a synchronisation) only every ``every_n_steps`` steps
    and before each checkpoint; in between, a flag on the device collects the steps' verdicts.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self._bad: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self._bad = bad if self._bad is None else self._bad | bad
        if trainer.global_step % self.every_n_steps == 0:
            self._check(trainer, pl_module, weights=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, weights=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._check(trainer, pl_module, weights=True)

    def _check(self, trainer, pl_module, weights: bool) -> None:
        loss_bad = self._bad is not None and bool(self._bad)
        weights_bad = weights and not all(bool(p.isfinite().all()) for p in pl_module.parameters())
        if not (loss_bad or weights_bad):
            return
        what = "training loss" if loss_bad else "model's weights"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        raise CnnlabError(
            f"The {what} became NaN or infinite (by step {trainer.global_step}, epoch "
            f"{trainer.current_epoch}); training stopped, and the run's checkpoints keep the "
            f"last state with finite values. Lower the learning rate (it was {lr:.3g}), use "
            "gradient clipping (trainer.gradient_clip_val=1.0) or check the data."
        )
