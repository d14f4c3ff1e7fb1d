"""The behaviour cnnlab takes from Lightning's and torchmetrics' internals (cnnlab.training.compat,
cnnlab.config.lightning_source), one test per function: after an upgrade, a failure here names
what changed, before resume or the step logs go wrong silently. Tiny modules on CPU, seconds."""

from __future__ import annotations

import dataclasses
import inspect

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.config.lightning_source import trainer_defaults_from_source
from cnnlab.data.base import ResumableLoader
from cnnlab.training import compat
from cnnlab.training.faults import LastCheckpoint

BATCHES = 10


class Tiny(L.LightningModule):
    """A linear classifier over BATCHES one-image batches whose third tensor is the index."""

    def __init__(self, log_index: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.log_index = log_index

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        if self.log_index:
            self.log("index", float(batch_idx), on_step=False, on_epoch=True)
        return F.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        # As cnnlab's module does (for its schedule): this makes the training loader early.
        assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = TensorDataset(torch.randn(BATCHES, 2), torch.zeros(BATCHES, dtype=torch.long),
                             torch.arange(BATCHES))  # fmt: skip
        return ResumableLoader(data, batch_size=1)


class TinyValidated(Tiny):
    """Tiny, validated on two one-image batches."""

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", F.cross_entropy(self.layer(x), y))

    def val_dataloader(self):
        return ResumableLoader(self.train_dataloader().dataset, batch_size=5)


def trainer(callbacks=(), **kwargs) -> L.Trainer:
    options = dict(max_epochs=1, logger=False, enable_checkpointing=False)
    return L.Trainer(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **{**options, **kwargs},
    )


class OnBatch(L.Callback):
    """Calls ``fn(trainer, pl_module, batch, batch_idx)`` at the start or end of every batch."""

    def __init__(self, start=None, end=None) -> None:
        self.start, self.end = start, end

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start:
            self.start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.end:
            self.end(trainer, pl_module, batch, batch_idx)


def test_attached_trainer():
    module, seen = Tiny(), []
    assert compat.attached_trainer(module) is None
    fit = trainer([OnBatch(start=lambda t, m, b, i: seen.append(compat.attached_trainer(m)))])
    fit.fit(module)
    assert seen and all(t is fit for t in seen)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_logs_this_step(accumulate):
    decisions = []

    def record(t, m, b, i):
        decisions.append((compat.logs_this_step(t), t._logger_connector.should_update_logs))

    fit = trainer([OnBatch(start=record)], max_epochs=2, log_every_n_steps=3,
                  accumulate_grad_batches=accumulate)  # fmt: skip
    fit.fit(Tiny())
    assert len(decisions) == 2 * BATCHES and any(ours for ours, _ in decisions)
    assert [ours for ours, _ in decisions] == [lightnings for _, lightnings in decisions]


@pytest.mark.parametrize("every, saved_at", [(4, [4, 8, 10]), (5, [5, 10])])
def test_save_last_checkpoint(tmp_path, every, saved_at):
    """LastCheckpoint saves every ``every`` steps and, through compat, at the epoch's end, unless
    that step was saved already."""
    steps = []

    class Count(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            steps.append(trainer.global_step)

    last = LastCheckpoint(str(tmp_path), every_n_train_steps=every)
    trainer([last, Count()], enable_checkpointing=True).fit(Tiny())
    assert steps == saved_at
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == BATCHES


class Events(L.Callback):
    """Records ("val", step) at each validation's start and ("save", step) at each save."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def on_validation_start(self, trainer, pl_module):
        self.seen.append(("val", trainer.global_step))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.seen.append(("save", trainer.global_step))


@pytest.mark.parametrize("interval, validated", [(1.0, [10]), (0.5, [5, 10])])
def test_validates_after_this_batch(interval, validated):
    asked, events = [], Events()

    def ask(t, m, b, i):
        if compat.validates_after_this_batch(t):
            asked.append(t.global_step)

    fit = trainer([OnBatch(end=ask), events], val_check_interval=interval,
                  num_sanity_val_steps=0)  # fmt: skip
    fit.fit(TinyValidated())
    assert asked == validated == [step for what, step in events.seen if what == "val"]


@pytest.mark.parametrize(
    "interval, seen",
    [
        (1.0, [("save", 5), ("val", 10), ("save", 10)]),
        (0.5, [("val", 5), ("save", 6), ("val", 10), ("save", 10)]),
    ],
)
def test_no_last_checkpoint_is_saved_between_a_step_and_its_validation(tmp_path, interval, seen):
    """Lightning resumes a checkpoint saved at a step it validates after as if that validation
    had run: LastCheckpoint saves such a step once its validation has run."""
    events = Events()
    last = LastCheckpoint(str(tmp_path), every_n_train_steps=5)
    fit = trainer([last, events], enable_checkpointing=True, val_check_interval=interval,
                  num_sanity_val_steps=0)  # fmt: skip
    fit.fit(TinyValidated())
    assert events.seen == seen


def test_logged_sums():
    sums = {}

    def fold(t, m, b, i):
        if i == 1:  # the mean so far: (0 + 1) / 2, as a sum and a count
            sums.update(compat.logged_sums(t))
            [state] = sums.values()
            assert float(state["value"]) == 1.0 and float(state["cumulated_batch_size"]) == 2
            compat.add_logged_sums(t, sums)  # as if batches 0 and 1 had run twice

    fit = trainer([OnBatch(end=fold)])
    fit.fit(Tiny(log_index=True))
    expected = (2 * (0 + 1) + sum(range(2, BATCHES))) / (BATCHES + 2)
    assert float(fit.callback_metrics["index"]) == pytest.approx(expected)


def test_metric_states():
    module = nn.Module()
    module.acc = MulticlassAccuracy(3, average="micro")
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    module.acc.update(logits, labels)
    states = compat.metric_states(module)
    assert states["acc"]["_update_count"] == 1

    fresh = nn.Module()
    fresh.acc = MulticlassAccuracy(3, average="micro")
    assert compat.metric_states(fresh) == {}
    compat.restore_metric_states(fresh, states)
    assert fresh.acc.update_count == 1
    assert torch.equal(fresh.acc.compute(), module.acc.compute())


@pytest.mark.parametrize("restore", [True, False])
def test_restore_loader_position(tmp_path, restore):
    path = tmp_path / "mid-epoch.ckpt"

    def save(t, m, b, i):
        if i == 3:
            t.save_checkpoint(path)

    trainer([OnBatch(end=save)]).fit(Tiny())
    first = []

    class Resume(L.Callback):
        def on_train_start(self, trainer, pl_module):
            if restore:
                compat.restore_loader_position(trainer)

    record = OnBatch(start=lambda t, m, b, i: first.append(int(b[2])))
    trainer([Resume(), record]).fit(Tiny(), ckpt_path=path)
    # Lightning alone restarts the epoch's data from its first batch (the reason for compat).
    assert first[0] == (4 if restore else 0)


def test_trainer_defaults_from_source():
    read = trainer_defaults_from_source()
    params = inspect.signature(L.Trainer.__init__).parameters
    real = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert read is not None and read == real
    assert dataclasses.is_dataclass(dataclasses.make_dataclass("T", list(read)))
