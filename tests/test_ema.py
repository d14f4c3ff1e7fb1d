"""The EMA of the weights is the run's model: validated, tested, evaluated; the raw weights'
test figures come with it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cnnlab.cli import evaluate
from cnnlab.training.run import train
from conftest import needs_fmnist

# 40 steps of LeNet-5 on 400 images, tested on all 10,000; an EMA of decay 0.9, which then
# differs from the weights.
SHORT = [
    "model=lenet5",
    "data.samples_per_class=40",
    "data.batch_size=20",
    "data.val_size=200",
    "trainer.max_epochs=2",
    "data.eval_batch_size=500",
    "callbacks.ema.decay=0.9",
]


@needs_fmnist
def test_ema_is_validated_tested_and_evaluated(compose_cfg, tmp_path):
    plain = train(compose_cfg(SHORT[:-1]))
    assert plain["tested_weights"] == "raw" and "test_acc_raw" not in plain
    (tmp_path / "run").rename(tmp_path / "plain")  # the fixture's run dir, for the next run

    ema = train(compose_cfg([*SHORT, "callbacks=ema"]))
    assert ema["status"] == "completed", ema.get("error")
    assert ema["tested_weights"] == "ema"
    assert {"test_acc_raw", "test_loss_raw"} <= ema.keys()
    assert ema["test_loss"] != ema["test_loss_raw"]

    # The checkpoint's state_dict is the average, the raw weights are next to it.
    best = torch.load(ema["tested_checkpoint"], map_location="cpu", weights_only=True)
    assert best["state_dict"].keys() >= best["raw_state_dict"].keys()
    key = "model.c1.0.weight"
    assert not torch.equal(best["state_dict"][key], best["raw_state_dict"][key])

    # cnnlab-eval reads the average: it reproduces the run's test accuracy exactly.
    assert evaluate.main([ema["run_dir"], "--device", "cpu"]) == 0
    tested = Path(ema["tested_checkpoint"])
    report = json.loads(tested.with_name(tested.stem + ".eval.json").read_text())
    assert report["test_acc"] == ema["test_acc"]
    # The same seed, the same raw training: the average is what differs.
    assert plain["test_acc"] != ema["test_acc"]
