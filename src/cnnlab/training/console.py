"""What a training run prints: Lightning's messages once, without its advertisements or its advice
that cnnlab's setup makes moot, in short console lines (train.log keeps Hydra's full format).

Importing this module installs the filters; each says what it hides and why. Warnings that
concern the run (too few batches for the logging interval, a GPU left unused, a data loader that
really is slow) are not filtered.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's advice that does not apply here: in-memory data sets batch by indexing and need no
# workers, cnnlab preprocesses in the LightningModule's on_after_batch_transfer on purpose, and
# LeafSpec is a deprecation inside Lightning's own use of torch's pytree.
for _message in ("does not have many workers", "overridden `on_after_batch_transfer`", "LeafSpec"):
    warnings.filterwarnings("ignore", message=f".*{_message}.*")

# Lightning logs its INFO messages through this logger (lightning.pytorch.utilities.rank_zero).
LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"

# The starts of Lightning INFO messages that say nothing about the run:
DROPPED = (
    # Every Trainer advertises Lightning's cloud services (LoggerConnector.configure_logger,
    # CallbackConnector._maybe_show_litmodels_tip in Lightning 2.6).
    "💡 Tip:",
    # cnnlab has no TPU configuration; the GPU line stays, it says whether the run got the GPU.
    "TPU available: False",
    # The learning-rate schedules ask for the run's length: nothing the user did or can change.
    "Loading `train_dataloader` to estimate number of stepping batches",
)


class DropLightningNoise(logging.Filter):
    """Drops the Lightning messages that start with one of :data:`DROPPED`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DROPPED)


logging.getLogger(LIGHTNING_INFO).addFilter(DropLightningNoise())


class ConsoleFormatter(logging.Formatter):
    """The message alone for INFO and below; the level and logger name before warnings and
    errors, which must stand out. conf/hydra/default.yaml gives it to Hydra's console handler."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname} {record.name}: {text}"
        return text


def lightning_logs_once() -> None:
    """The ``lightning`` package gives its logger a console handler of its own and also lets its
    messages reach the root logger, where Hydra has put a console and a train.log handler: every
    Lightning message would print twice. Once the root logger has handlers, Lightning's goes."""
    if not logging.getLogger().handlers:
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_logger.removeHandler(handler)
