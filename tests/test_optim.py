"""Optimizer parameter groups and the learning-rate schedules, step by step."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.config.schema import OptimizerConfig, SchedulerConfig
from cnnlab.models.resnet import ResNet
from cnnlab.optim.factory import build_optimizer, build_scheduler


def _cfg(schema, **values):
    return OmegaConf.merge(OmegaConf.structured(schema), values)


def _lrs(scheduler_cfg, total: int, per_epoch: int, lr: float = 0.1) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, _cfg(OptimizerConfig, name="sgd", lr=lr))
    scheduler = build_scheduler(optimizer, scheduler_cfg, total, per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_weight_decay_skips_batchnorm_and_biases():
    model = ResNet(num_classes=10, in_chans=1)
    optimizer = build_optimizer(model, _cfg(OptimizerConfig, weight_decay=5e-4))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim == 1 for p in plain["params"])
    total = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9


def test_adamw_takes_all_parameters_in_one_group_when_asked():
    model = ResNet(num_classes=10, in_chans=1)
    cfg = _cfg(OptimizerConfig, name="adamw", lr=1e-3, decay_norm_and_bias=True)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1


def test_cosine_with_linear_warmup():
    lrs = _lrs(_cfg(SchedulerConfig, name="cosine", warmup_epochs=1, min_lr_ratio=0.1), 100, 10)
    assert lrs[:10] == pytest.approx([0.1 * (i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[55] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.01, rel=0.01)


def test_step_decay():
    lrs = _lrs(_cfg(SchedulerConfig, name="step", step_epochs=3, gamma=0.1), 90, 10)
    assert lrs[29] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.001)


def test_onecycle_peaks_at_the_configured_lr():
    lrs = _lrs(_cfg(SchedulerConfig, name="onecycle", pct_start=0.25), 100, 10)
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)
    assert lrs.index(max(lrs)) in range(23, 27)
    assert lrs[-1] < 1e-4


def test_none_keeps_the_lr():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, _cfg(OptimizerConfig))
    assert build_scheduler(optimizer, _cfg(SchedulerConfig, name="none"), 10, 1) is None
