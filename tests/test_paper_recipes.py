"""The classic papers' training recipes (conf/experiment/paper/*.yaml): each one's learning rate,
step by step, against the paper's formula, built by the real optimizer and scheduler code from the
composed config; the learning rates Lightning's LR monitor logs in short real runs; and a
fast_dev_run of every recipe."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from cnnlab.config.schema import validate
from cnnlab.models.weights import hub_dir
from cnnlab.optim.factory import build_optimizer, build_scheduler
from cnnlab.training.run import train
from conftest import CONF, needs_fmnist

RECIPES = sorted(p.stem for p in (CONF / "experiment" / "paper").glob("*.yaml"))
FASHION_MNIST_TRAIN = 60_000
LITE0 = "efficientnet-lite0-57934424.pth"


def steps_per_epoch(cfg) -> int:
    return math.ceil((FASHION_MNIST_TRAIN - cfg.data.val_size) / cfg.data.batch_size)


def staircase(lr: float, gamma: float, every: int):
    return lambda t: lr * gamma ** (t // every)


def resnet_cifar(t: int) -> float:
    """He et al. 2016, section 4.2: 0.01 for ~400 iterations (ResNet-110), then 0.1, divided by
    10 at 32k and 48k iterations."""
    return 0.01 if t < 400 else 0.1 * 0.1 ** ((t >= 32_000) + (t >= 48_000))


# name: (the paper's learning rate at optimizer step t, for steps_per_epoch steps an epoch)
FORMULAS = {
    # GoogLeNet: decreased by 4% every 8 epochs.
    "googlenet": lambda spe: staircase(0.01, 0.96, 8 * spe),
    # Inception v3: 0.045, times 0.94 every 2 epochs; MobileNet v1 follows it.
    "inception_v3": lambda spe: staircase(0.045, 0.94, 2 * spe),
    "mobilenet_v1": lambda spe: staircase(0.045, 0.94, 2 * spe),
    # SE-ResNet: 0.6 divided by 10 every 30 epochs.
    "se_resnet": lambda spe: staircase(0.6, 0.1, 30 * spe),
    # EfficientNet: times 0.97 every 2.4 epochs (at the batch 256 equivalent of 0.256).
    "efficientnet": lambda spe: staircase(0.016, 0.97, round(2.4 * spe)),
    "resnet_cifar": lambda spe: resnet_cifar,
}


def schedule_of(cfg, total: int, per_epoch: int):
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg.optimizer)
    return optimizer, build_scheduler(optimizer, cfg.scheduler, total, per_epoch)


def test_every_paper_has_a_recipe_and_a_formula():
    assert set(RECIPES) == {*FORMULAS, "alexnet", "vgg"}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_recipe_learning_rate_follows_the_paper(compose_cfg, name):
    cfg = validate(compose_cfg([f"experiment=paper/{name}", "data=fashion_mnist"]))
    spe = steps_per_epoch(cfg)
    total = cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else cfg.trainer.max_epochs * spe
    # At least two decays of every schedule (ResNet's third: the next test).
    total = min(total, 40_000)
    optimizer, schedule = schedule_of(cfg, total, spe)
    formula = FORMULAS[name](spe)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([formula(t) for t in range(total)], rel=1e-9)
    assert sum(a != b for a, b in zip(lrs, lrs[1:], strict=False)) >= 2  # it changes


def test_resnet_cifar_is_exact_in_iterations_whatever_the_data(compose_cfg):
    """The same steps with CIFAR-10 and Fashion-MNIST, and no epoch length needed at all (a run
    of max_epochs=-1 does not know it)."""
    chosen = [0, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999]
    for data in ("cifar10", "fashion_mnist"):
        cfg = validate(compose_cfg(["experiment=paper/resnet_cifar", f"data={data}"]))
        assert cfg.trainer.max_steps == 64_000 and cfg.trainer.max_epochs == -1
        assert cfg.data.batch_size == 128
        optimizer, schedule = schedule_of(cfg, 64_000, None)
        lrs = {}
        for t in range(64_000):
            if t in chosen:
                lrs[t] = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
        assert lrs == pytest.approx({t: resnet_cifar(t) for t in chosen}), data


@pytest.mark.parametrize("name", ["alexnet", "vgg"])
def test_plateau_recipes_divide_by_ten_when_validation_accuracy_stops_improving(compose_cfg, name):
    """AlexNet and VGG: the rate divided by 10 once the validation accuracy has not improved
    for `patience` epochs (the rate stepped once per epoch, given that epoch's val_acc)."""
    cfg = validate(compose_cfg([f"experiment=paper/{name}"]))
    assert (cfg.scheduler.monitor, cfg.scheduler.mode, cfg.scheduler.interval) == (
        "val_acc",
        "max",
        "epoch",
    )
    optimizer, schedule = schedule_of(cfg, cfg.trainer.max_epochs, None)
    patience = cfg.scheduler.patience
    accuracy = [0.5, 0.6, 0.7] + [0.69] * (patience + 1) + [0.8] + [0.79] * (patience + 1)
    lrs = []
    for value in accuracy:
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.step(value)
    lrs.append(optimizer.param_groups[0]["lr"])
    first = 3 + patience + 1  # the epoch after patience + 1 epochs without improvement
    expected = [0.01] * first + [0.001] * (patience + 2) + [0.0001]
    assert lrs == pytest.approx(expected)


def logged_lrs(run_dir: Path) -> list[float]:
    """The first parameter group's learning rate at each step, from the LR monitor's column."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    [column] = [k for k in rows[0] if k.startswith("lr-") and k.endswith(("SGD", "pg1"))]
    return [float(row[column]) for row in rows if row[column]]


LOG_EVERY_STEP = [
    "callbacks.lr_monitor.logging_interval=step",
    "trainer.log_every_n_steps=1",
    "test=false",
    "data.eval_batch_size=50",
]


@needs_fmnist
def test_resnet_cifar_steps_logged_by_the_lr_monitor(compose_cfg):
    """A real run of the recipe, milestones moved in: constant warm-up at 0.1x for 3 steps,
    then 0.1, divided by 10 at steps 5 and 7, as the LR monitor logs them."""
    cfg = compose_cfg(
        [
            "experiment=paper/resnet_cifar",
            "data=fashion_mnist",
            "model=resnet20",
            "data.batch_size=8",
            "data.samples_per_class=10",
            "data.val_size=50",
            "scheduler.warmup=3",
            "scheduler.milestones=[5,7]",
            "trainer.max_steps=8",
            *LOG_EVERY_STEP,
        ]
    )
    results = train(cfg)
    assert results["status"] == "completed", results.get("error")
    expected = [0.01] * 3 + [0.1] * 2 + [0.01] * 2 + [0.001]
    assert logged_lrs(Path(results["run_dir"])) == pytest.approx(expected)


@pytest.mark.heavy
@needs_fmnist
def test_efficientnet_decay_every_fractional_epochs_logged_by_the_lr_monitor(compose_cfg):
    """20 training images in batches of 4: 5 steps an epoch, so 0.97 every 2.4 epochs is every
    12 steps of the real run. (TinyNet-E, the smallest
    of timm's EfficientNets, for B0: the schedule is under test, and B0's steps take minutes on
    a loaded 2-core machine.)"""
    cfg = compose_cfg(
        [
            "experiment=paper/efficientnet",
            "model.name=tinynet_e",
            "augmentation=none",
            "data.batch_size=4",
            "data.samples_per_class=2",
            "data.val_size=10",
            "trainer.max_steps=26",
            "trainer.limit_val_batches=1",
            *LOG_EVERY_STEP,
        ]
    )
    results = train(cfg)
    assert results["status"] == "completed", results.get("error")
    expected = [0.016 * 0.97 ** (t // 12) for t in range(26)]
    assert logged_lrs(Path(results["run_dir"])) == pytest.approx(expected)


# Recipes whose fast_dev_run takes half a minute or more on a loaded 2-core machine (large or
# deep models at the recipe's input size): `make test-all` runs them.
LARGE = {"vgg", "se_resnet", "inception_v3", "resnet_cifar", "efficientnet"}


@needs_fmnist
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.heavy) if n in LARGE else n for n in RECIPES]
)
def test_recipe_runs_a_fast_dev_run(compose_cfg, name):
    cfg = compose_cfg(
        [
            f"experiment=paper/{name}",
            "data=fashion_mnist",
            "debug=fdr",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "data.samples_per_class=2",
        ]
    )
    results = train(cfg)
    assert results["status"] == "completed", results.get("error")
    assert math.isfinite(results["test_loss"])


@needs_fmnist
@pytest.mark.skipif(
    not (hub_dir() / LITE0).is_file(),
    reason="python scripts/offline_assets.py --only lite0 puts the weights in the hub cache",
)
def test_efficientnet_recipe_fine_tunes_the_real_lite0_weights(compose_cfg):
    cfg = compose_cfg(
        [
            "experiment=paper/efficientnet",
            "model.name=efficientnet_lite0",
            f"model.weights_file={LITE0}",
            "transfer=finetune",
            "debug=fdr",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "data.samples_per_class=2",
        ]
    )
    results = train(cfg)
    assert results["status"] == "completed", results.get("error")
    assert math.isfinite(results["test_loss"])
