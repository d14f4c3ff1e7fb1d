"""Progress reporting: a Rich bar for people at a terminal, plain lines for logs and CI."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


class PlainProgressBar(ProgressBar):
    """One line every ``every_n_steps`` training steps and one per validation, for non-interactive
    output. Metrics are read (a host sync) only when a line is printed."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._epoch_start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    def _metrics(self, trainer, pl_module, prefixes: tuple[str, ...]) -> str:
        metrics = self.get_metrics(trainer, pl_module)
        shown = [
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in metrics.items()
            if k.startswith(prefixes)
        ]
        return " ".join(shown)

    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed mid-epoch starts without on_train_epoch_start.
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = batch_idx + 1
        if self.every_n_steps > 0 and step % self.every_n_steps == 0:
            total = self.total_train_batches
            total_text = "?" if total == float("inf") else str(int(total))
            metrics = self._metrics(trainer, pl_module, ("train_loss_step",))
            self._print(f"epoch {trainer.current_epoch} step {step}/{total_text} {metrics}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning validates inside the training epoch, so val_* are this epoch's here.
        elapsed = time.perf_counter() - self._epoch_start
        metrics = self._metrics(trainer, pl_module, ("train_loss_epoch", "val_"))
        self._print(f"epoch {trainer.current_epoch} done in {elapsed:.1f}s {metrics}")


def progress_bar(every_n_steps: int = 50, interactive: bool | None = None) -> ProgressBar:
    """A Rich progress bar when stdout is a terminal, else :class:`PlainProgressBar`."""
    if interactive is None:
        interactive = sys.stdout.isatty()
    return RichProgressBar() if interactive else PlainProgressBar(every_n_steps)
