"""Optimizers and learning-rate schedules built from the ``optimizer`` and ``scheduler`` groups."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from cnnlab.config import OptimizerName, SchedulerName


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list:
    """Trainable parameters, split so that weight decay skips BatchNorm scales and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 or decay_norm_and_bias else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if OptimizerName(cfg.name) is OptimizerName.sgd:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: DictConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step schedule. ``warmup_epochs`` of linear warm-up precede cosine and step decay."""
    name = SchedulerName(cfg.name)  # accepts the enum member and its string value alike
    if name is SchedulerName.none:
        return None
    if name is SchedulerName.onecycle:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
        )
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    step_every = max(1, cfg.step_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name is SchedulerName.step:
            return cfg.gamma ** (step // step_every)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
