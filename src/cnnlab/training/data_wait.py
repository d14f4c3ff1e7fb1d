"""How much of training waits for data: the time between one training step's end and the next
one's start (fetching the batch from the DataLoader, moving it to the device and the batched
preprocessing in ``on_after_batch_transfer``) as a fraction of the epoch's training time."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class DataWaitMonitor(Callback):
    """Logs ``data_wait_frac`` once per training epoch and keeps every epoch's value in
    ``fractions``. The first batch of an epoch is left out: its wait is the DataLoader's start
    (worker processes), a fixed cost, not a per-step one. On a GPU, steps are timed as the host
    sees them: kernels still queued count as step time, which is what a host-side wait hides."""

    def __init__(self) -> None:
        self.fractions: list[float] = []
        self._last_end: float | None = None
        self._start = 0.0
        self._wait = self._step = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end, self._wait, self._step = None, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        if self._last_end is not None:
            self._wait += self._start - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_end = time.perf_counter()
        self._step += self._last_end - self._start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        total = self._wait + self._step
        if total > 0 and self._wait > 0:
            self.fractions.append(self._wait / total)
            pl_module.log("data_wait_frac", self.fractions[-1], on_epoch=True)
