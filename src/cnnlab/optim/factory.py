"""Optimizers and learning-rate schedules built from the ``optimizer`` and ``scheduler`` groups."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from omegaconf import DictConfig
from torch import nn

from cnnlab.config.schema import OptimizerName, SchedulerName


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    decay_norm_and_bias: bool,
    lr: float,
    lr_scales: dict[str, float] | None = None,
) -> list[dict]:
    """Trainable parameters, split so that weight decay skips BatchNorm scales and biases, and
    by learning rate: ``lr`` times ``lr_scales[name]`` (1 for a name not in it), which transfer
    strategies set for discriminative learning rates."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 or decay_norm_and_bias
        groups.setdefault((decay, (lr_scales or {}).get(name, 1.0)), []).append(p)
    # Decayed groups first: with one learning rate, the first group is the decayed one.
    order = sorted(groups, key=lambda key: (not key[0], -key[1]))
    return [
        {"params": groups[decay, scale], "weight_decay": weight_decay * decay, "lr": lr * scale}
        for decay, scale in order
    ]


def build_optimizer(
    model: nn.Module, cfg: DictConfig, lr_scales: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over the trainable parameters of ``model``; ``lr_scales``: the
    learning-rate factors of a transfer strategy (cnnlab.transfer.strategies.TransferPlan)."""
    groups = parameter_groups(
        model.named_parameters(), cfg.weight_decay, cfg.decay_norm_and_bias, cfg.lr, lr_scales
    )
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


def add_param_groups(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    groups: list[dict],
) -> None:
    """Add ``groups`` to a running optimizer and its per-step schedule. Each new group's ``lr`` is
    its peak: from now on it follows the rest of the schedule as the first group does, scaled by
    the ratio of the two peaks."""
    first = optimizer.param_groups[0]
    peak = first.get("max_lr", first.get("initial_lr", first["lr"]))
    for group in groups:
        lr = group["lr"]
        optimizer.add_param_group(group)
        new = optimizer.param_groups[-1]
        new["lr"] = first["lr"] * lr / peak
        if scheduler is None:
            continue
        new["initial_lr"] = first["initial_lr"] * lr / peak
        if "max_lr" in first:  # one-cycle: every group carries its own anchors, and momentum
            new["max_lr"], new["min_lr"] = lr, first["min_lr"] * lr / peak
            for key in ("momentum", "betas", "base_momentum", "max_momentum"):
                if key in first:
                    new[key] = first[key]
        else:  # LambdaLR: one base learning rate and one factor function per group
            scheduler.base_lrs.append(new["initial_lr"])
            scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
