"""Optimizer parameter groups and the learning-rate schedules, step by step, built from the real
conf/optimizer and conf/scheduler files."""

from __future__ import annotations

import math

import pytest
import timm.optim
import torch
from omegaconf import OmegaConf

from cnnlab.models.mobilenet import MobileNetV1
from cnnlab.models.resnet import ResNet
from cnnlab.optim.factory import build_optimizer, build_scheduler
from conftest import CONF, needs_fmnist, read_results, run_cli, run_dirs


def option(group: str, name: str, **values):
    return OmegaConf.merge(OmegaConf.load(CONF / group / f"{name}.yaml"), values)


def lrs_of(scheduler_cfg, total: int, per_epoch: int | None, lr: float = 0.1, metrics=None):
    """The first group's learning rate at each of ``total`` steps (the rate the step used)."""
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, option("optimizer", "sgd", lr=lr))
    schedule = build_scheduler(optimizer, scheduler_cfg, total, per_epoch)
    lrs = []
    for step in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step(None if metrics is None else metrics[step])
    return lrs


def test_weight_decay_skips_batchnorm_and_biases():
    model = ResNet(num_classes=10, in_chans=1)
    optimizer = build_optimizer(model, option("optimizer", "sgd", weight_decay=5e-4))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim == 1 for p in plain["params"])
    total = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9


def test_adamw_takes_all_parameters_in_one_group_when_asked():
    model = ResNet(num_classes=10, in_chans=1)
    cfg = option("optimizer", "adamw", lr=1e-3, decay_norm_and_bias=True)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1


@pytest.mark.parametrize(
    "name,cls,lr",
    [
        ("adam", torch.optim.Adam, 0.01),
        ("rmsprop", timm.optim.RMSpropTF, 0.01),
        ("lamb", timm.optim.Lamb, 0.01),
        ("lion", timm.optim.Lion, 0.003),
    ],
)
def test_optimizer_options_build_their_class_and_learn(name, cls, lr):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    x = torch.randn(64, 8)
    y = x.sum(1, keepdim=True)
    optimizer = build_optimizer(model, option("optimizer", name, lr=lr))
    assert type(optimizer) is cls
    first = None
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_cosine_with_linear_warmup():
    cfg = option("scheduler", "cosine", warmup=1, eta_min=0.01)
    lrs = lrs_of(cfg, 100, 10)
    # Warm-up on the schedule's clock: the cosine's factor times (t + 1) / 10.
    cosine = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / 100)) for t in range(100)]
    assert lrs[:10] == pytest.approx([cosine[t] * (t + 1) / 10 for t in range(10)])
    assert lrs[10:] == pytest.approx(cosine[10:])
    assert lrs[-1] == pytest.approx(0.01, rel=0.01)


def test_step_decay_in_epochs_is_stepped_per_step():
    lrs = lrs_of(option("scheduler", "step", step_size=3, gamma=0.1), 90, 10)
    assert lrs[29] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.001)


def test_exponential_decays_every_fractional_number_of_epochs():
    """0.97 every 2.4 epochs of 10 steps: a factor every 24 steps."""
    lrs = lrs_of(option("scheduler", "exponential"), 100, 10)
    assert lrs == pytest.approx([0.1 * 0.97 ** (t // 24) for t in range(100)])


@pytest.mark.parametrize(
    "unit,milestones,per_epoch", [("epoch", [2, 5], 10), ("step", [20, 50], 7)]
)
def test_multistep_milestones_in_epochs_or_steps(unit, milestones, per_epoch):
    cfg = option("scheduler", "multistep", milestones=milestones, unit=unit)
    lrs = lrs_of(cfg, 60, per_epoch)
    assert lrs == pytest.approx([0.1 * 0.1 ** ((t >= 20) + (t >= 50)) for t in range(60)])


def test_plateau_divides_when_the_monitored_metric_stops_improving():
    cfg = option("scheduler", "plateau", patience=2, interval="step")
    losses = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    lrs = lrs_of(cfg, len(losses), None, metrics=losses)
    # Three steps without improvement (patience 2) after the step at 0.8: lr / 10.
    assert lrs == pytest.approx([0.1] * 6 + [0.01] * 3 + [0.001])


def test_constant_warmup_then_back_to_the_full_rate():
    """ResNet-110's warm-up: 0.1 x the rate for the first steps, then the rate."""
    cfg = option("scheduler", "none", warmup=4, unit="step", warmup_mode="constant")
    cfg.warmup_factor = 0.1
    assert lrs_of(cfg, 6, None) == pytest.approx([0.01] * 4 + [0.1] * 2)


def test_onecycle_peaks_at_the_configured_lr():
    lrs = lrs_of(option("scheduler", "onecycle", pct_start=0.25), 100, 10)
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)
    assert lrs.index(max(lrs)) in range(23, 27)
    assert lrs[-1] < 1e-4


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_onecycle_runs_the_shortest_runs(steps):
    """torch's OneCycleLR divides by zero when its warm-up is exactly one step (4 steps at
    pct_start 0.25): cnnlab's schedule rises to the peak and falls in any number of steps."""
    lrs = lrs_of(option("scheduler", "onecycle", pct_start=0.25), steps, steps)
    assert len(lrs) == steps and max(lrs) <= 0.1 + 1e-9
    if steps == 4:
        assert lrs[0] < lrs[1] and lrs[-1] < lrs[1]


def test_a_timm_scheduler_by_target_steps_per_update():
    cfg = OmegaConf.create(
        {
            "_target_": "timm.scheduler.CosineLRScheduler",
            "_partial_": True,
            "length_arg": "t_initial",
            "warmup_t": 10,
            "warmup_lr_init": 0.0,
        }
    )
    lrs = lrs_of(cfg, 100, 10)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.05)
    assert lrs[50] == pytest.approx(0.05, abs=1e-9) and lrs[-1] < 1e-3


def test_none_keeps_the_lr():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, option("optimizer", "sgd"))
    assert build_scheduler(optimizer, option("scheduler", "none"), 10, 1) is None


def test_depthwise_filters_can_go_without_weight_decay():
    model = MobileNetV1(num_classes=10, in_chans=1)
    depthwise = {id(b.depthwise[0].weight) for b in model.modules() if hasattr(b, "depthwise")}
    for flag, exempt in ((True, set()), (False, depthwise)):
        cfg = option("optimizer", "rmsprop", decay_depthwise=flag)
        optimizer = build_optimizer(model, cfg)
        plain = {
            id(p) for g in optimizer.param_groups if not g["weight_decay"] for p in g["params"]
        }
        assert exempt <= plain and len(depthwise) == 13
        assert all(
            p.ndim == 1 or id(p) in exempt
            for g in optimizer.param_groups
            if not g["weight_decay"]
            for p in g["params"]
        )


@needs_fmnist
def test_new_optimizers_schedules_and_a_users_own_train_from_the_cli(tmp_path):
    """A multirun of the shipped RMSProp and an optimizer YAML of the user's own (in a folder
    added with hydra.searchpath) under the exponential and plateau schedules (the paper recipes' and
    the ablations' tests train under multistep)."""
    own = tmp_path / "myconf" / "optimizer"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text(
        "_target_: torch.optim.RMSprop\n_partial_: true\nlr: 0.001\nalpha: 0.9\n"
    )
    proc = run_cli(
        [
            "-m",
            f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
            "optimizer=rmsprop,mine",
            "scheduler=exponential,plateau",
            "model=lenet5",
            "data.samples_per_class=10",
            "data.val_size=100",
            "data.batch_size=50",
            "data.eval_batch_size=200",
            "trainer.max_epochs=2",
            "trainer.limit_test_batches=1",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 4
    targets = set()
    for run_dir in dirs:
        assert read_results(run_dir)["status"] == "completed"
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        targets.add((cfg.optimizer._target_, cfg.scheduler._target_))
    assert ("torch.optim.RMSprop", "torch.optim.lr_scheduler.ReduceLROnPlateau") in targets
    assert len(targets) == 4
