"""Progress reporting: a Rich bar for people at a terminal, plain lines for logs and CI. Both show
the training speed in images per second and the time left of the whole run."""

from __future__ import annotations

import math
import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


def duration(seconds: float) -> str:
    """125 -> '2m05s', 3725 -> '1h02m'; '?' when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunSpeed:
    """Images per second and the time left of a run, from the training batches seen so far.

    Batch sizes are shapes, so counting needs no host sync. The time left extrapolates the run's
    wall time per optimizer step so far (validation included, from the second epoch on) to the
    steps left of ``trainer.estimated_stepping_batches``."""

    def __init__(self) -> None:
        self.start = self.window_start = time.perf_counter()
        self.start_step = 0
        self.window_images = 0

    def on_train_start(self, trainer) -> None:
        # A resumed run starts at its checkpoint's step.
        self.start, self.start_step = time.perf_counter(), trainer.global_step
        self.restart_window()

    def restart_window(self) -> None:
        self.window_start, self.window_images = time.perf_counter(), 0

    def on_batch(self, batch) -> None:
        self.window_images += len(batch[0])

    def images_per_s(self) -> float:
        elapsed = time.perf_counter() - self.window_start
        return self.window_images / elapsed if elapsed > 0 else math.nan

    def seconds_left(self, trainer) -> float:
        done = trainer.global_step - self.start_step
        total = trainer.estimated_stepping_batches
        if done <= 0 or not math.isfinite(total):
            return math.inf
        return (time.perf_counter() - self.start) / done * max(0, total - trainer.global_step)


def _of(step: int, total: float) -> str:
    """'7/100'; '7/?' for a loader of unknown length."""
    return f"{step}/{'?' if total == float('inf') else int(total)}"


class PlainProgressBar(ProgressBar):
    """One line every ``every_n_steps`` training steps and one per validation, for non-interactive
    output. Metrics are read (a host sync) only when a line is printed. A step line's images/s is
    the speed since the previous line; an epoch line's, that of the epoch's training batches.
    Validation and testing print a line every ``every_n_steps`` batches too: a long one (a large
    validation split, a slow data source) shows in the log that it is moving."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._epoch_start = 0.0
        self._epoch_images = 0
        self._epoch_train_end = 0.0
        self.speed = RunSpeed()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, *parts: str) -> None:
        if self._enabled:
            print(" ".join(part for part in parts if part), flush=True)

    def _metrics(self, trainer, pl_module, prefixes: tuple[str, ...]) -> str:
        metrics = self.get_metrics(trainer, pl_module)
        shown = [
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in metrics.items()
            if k.startswith(prefixes)
        ]
        return " ".join(shown)

    def _start_epoch(self) -> None:
        self._epoch_start = self._epoch_train_end = time.perf_counter()
        self._epoch_images = 0
        self.speed.restart_window()

    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed mid-epoch starts without on_train_epoch_start.
        self.speed.on_train_start(trainer)
        self._start_epoch()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start_epoch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.speed.on_batch(batch)
        self._epoch_images += len(batch[0])
        self._epoch_train_end = time.perf_counter()
        step = batch_idx + 1
        if self.every_n_steps > 0 and step % self.every_n_steps == 0:
            metrics = self._metrics(trainer, pl_module, ("train_loss_step",))
            self._print(
                f"epoch {trainer.current_epoch} step {_of(step, self.total_train_batches)}",
                metrics,
                f"{self.speed.images_per_s():.0f} img/s",
                f"eta {duration(self.speed.seconds_left(trainer))}",
            )
            self.speed.restart_window()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            where = f"epoch {trainer.current_epoch} validation"
            self._eval_line(where, batch_idx, trainer.num_val_batches[dataloader_idx])

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._eval_line("test", batch_idx, trainer.num_test_batches[dataloader_idx])

    def _eval_line(self, where: str, batch_idx: int, total: float) -> None:
        step = batch_idx + 1
        if self.every_n_steps > 0 and step % self.every_n_steps == 0:
            self._print(f"{where} {_of(step, total)}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning validates inside the training epoch, so val_* are this epoch's here.
        now = time.perf_counter()
        training = self._epoch_train_end - self._epoch_start
        rate = self._epoch_images / training if training > 0 else math.nan
        metrics = self._metrics(trainer, pl_module, ("train_loss_epoch", "val_"))
        self._print(
            f"epoch {trainer.current_epoch} done in {now - self._epoch_start:.1f}s",
            f"{rate:.0f} img/s",
            metrics,
            f"eta {duration(self.speed.seconds_left(trainer))}",
        )


class RichRunProgressBar(RichProgressBar):
    """Lightning's Rich bar (its times are the epoch's) with the epoch's images/s so far and the
    time left of the whole run among the metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.speed = RunSpeed()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.speed.on_train_start(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.speed.restart_window()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.speed.on_batch(batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.training and self.speed.window_images:
            metrics["img/s"] = f"{self.speed.images_per_s():.0f}"
            metrics["run eta"] = duration(self.speed.seconds_left(trainer))
        return metrics


def progress_bar(every_n_steps: int = 50, interactive: bool | None = None) -> ProgressBar:
    """A Rich progress bar when stdout is a terminal, else :class:`PlainProgressBar`."""
    if interactive is None:
        interactive = sys.stdout.isatty()
    return RichRunProgressBar() if interactive else PlainProgressBar(every_n_steps)
