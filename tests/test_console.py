"""What a training run prints before and while it trains: one screen up to the first epoch line,
cnnlab's model table and not Lightning's, no advertisements, and a progress line with the speed
in images per second and the time left of the run."""

from __future__ import annotations

import logging
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.training.console import ConsoleFormatter
from cnnlab.training.progress import duration, progress_bar
from conftest import needs_fmnist, run_cli, run_dirs

# 200 training images in batches of 25: eight steps, a line every other step.
TINY = [
    "data.samples_per_class=20",
    "data.batch_size=25",
    "data.val_size=100",
    "trainer.max_epochs=1",
    "callbacks.progress.every_n_steps=2",
    "test=false",
]


@needs_fmnist
def test_first_screen_of_the_default_experiment(tmp_path):
    proc = run_cli(TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 0 "))
    shown = lines[:first_epoch] + proc.stderr.splitlines()
    text = "\n".join(shown)
    assert len(shown) <= 30, text
    # Lightning's model summary (metric objects listed as modules) is off...
    for row in ("MulticlassAccuracy", "MeanMetric", "Modules in train mode", "Total FLOPs"):
        assert row not in proc.stdout, text
    # ...and cnnlab's table of the model's blocks is there, once, with the model's MACs.
    assert text.count("module  trainable  frozen  BatchNorm") == 1, text
    assert re.search(r"^total +77,754 +0$", text, re.M), text
    assert re.search(r"^model: [\d.]+ M MACs per 1x28x28 image$", text, re.M), text
    # No advertisements, no Hydra prefixes on the console; a warning that concerns the run stays.
    for noise in ("Tip:", "litlogger", "litmodels", "TPU available", "][INFO]"):
        assert noise not in proc.stdout + proc.stderr, text
    assert "smaller than the logging interval" in proc.stderr
    assert "GPU available: False, used: False" in text
    # train.log keeps the full lines.
    [run_dir] = run_dirs(tmp_path)
    assert (
        "[lightning.pytorch.utilities.rank_zero][INFO] - GPU available"
        in (run_dir / "train.log").read_text()
    )
    # Speed and the time left of the run on every progress line.
    steps = [line for line in lines if line.startswith("epoch 0 step ")]
    assert [line.split()[3] for line in steps] == ["2/8", "4/8", "6/8", "8/8"], lines
    for line in steps:
        assert re.fullmatch(r"epoch 0 step \d/8 \d+ img/s eta (\d+m)?\d+s", line), line
    assert steps[-1].endswith(" eta 0s"), steps
    [done] = [line for line in lines if line.startswith("epoch 0 done")]
    assert re.fullmatch(
        r"epoch 0 done in [\d.]+s \d+ img/s val_loss=[\d.]+ val_acc=[\d.]+ eta 0s", done
    ), done


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (59.6, "1m00s"), (125, "2m05s"), (3725, "1h02m"), (float("inf"), "?")],
)
def test_durations_read_as_minutes_and_hours(seconds, text):
    assert duration(seconds) == text


def test_console_lines_name_level_and_logger_for_warnings_only():
    formatter = ConsoleFormatter()

    def line(level: int) -> str:
        record = logging.LogRecord("cnnlab.data", level, __file__, 1, "read %d", (3,), None)
        return formatter.format(record)

    assert line(logging.INFO) == "read 3"
    assert line(logging.WARNING) == "WARNING cnnlab.data: read 3"


class TinyClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_rich_bar_shows_speed_and_time_left_of_the_run(tmp_path):
    """The bar people see at a terminal: its metrics carry img/s and the run's time left."""
    bar = progress_bar(interactive=True)
    shown = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            shown.append(bar.get_metrics(trainer, pl_module))

    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[bar, Record()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyClassifier(), DataLoader(data, batch_size=10))
    assert len(shown) == 8
    assert all(int(m["img/s"]) > 0 for m in shown), shown
    assert shown[-1]["run eta"] == "0s"
    assert all(re.fullmatch(r"(\d+m)?\d+s", m["run eta"]) for m in shown), shown


class EvaluatedClassifier(TinyClassifier):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)


def test_plain_lines_show_a_long_validation_and_test_moving(tmp_path, capsys):
    """A line every every_n_steps validation or test batches too (none in the sanity check)."""
    loader = DataLoader(TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,))), 10)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[progress_bar(every_n_steps=2, interactive=False)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=2,
        default_root_dir=tmp_path,
    )
    module = EvaluatedClassifier()
    trainer.fit(module, loader, loader)
    trainer.test(module, loader, verbose=False)
    lines = capsys.readouterr().out.splitlines()
    evaluation = [line for line in lines if "validation" in line or line.startswith("test")]
    assert evaluation == [
        "epoch 0 validation 2/4",
        "epoch 0 validation 4/4",
        "test 2/4",
        "test 4/4",
    ], lines
