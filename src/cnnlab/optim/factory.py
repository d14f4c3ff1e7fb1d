"""Optimizers and learning-rate schedules built from the ``optimizer`` and ``scheduler`` groups.

Each group names a class by ``_target_`` with ``_partial_: true`` (lightning-hydra-template's
convention), any of torch.optim, timm.optim, torch.optim.lr_scheduler, timm.scheduler or the
user's own; cnnlab adds what the class does not know about (config/schema.py's
OptimizerOptions and SchedulerOptions): parameter groups, warm-up, the unit of time.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection, Iterable
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from cnnlab.config.schema import OptimizerOptions, SchedulerOptions, split_options
from cnnlab.errors import CnnlabError
from cnnlab.optim.schedule import Schedule


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    decay_norm_and_bias: bool,
    lr: float,
    lr_scales: dict[str, float] | None = None,
    exempt: Collection[int] = (),
) -> list[dict]:
    """Trainable parameters, split so that weight decay skips BatchNorm scales and biases (and
    the parameters whose ids are in ``exempt``), and by learning rate: ``lr`` times
    ``lr_scales[name]`` (1 for a name not in it), which transfer strategies set for
    discriminative learning rates."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        decay = (p.ndim > 1 or decay_norm_and_bias) and id(p) not in exempt
        groups.setdefault((decay, (lr_scales or {}).get(name, 1.0)), []).append(p)
    # Decayed groups first: with one learning rate, the first group is the decayed one.
    order = sorted(groups, key=lambda key: (not key[0], -key[1]))
    return [
        {"params": groups[decay, scale], "weight_decay": weight_decay * decay, "lr": lr * scale}
        for decay, scale in order
    ]


def decay_exempt(module: nn.Module, cfg: DictConfig) -> set[int]:
    """The ids of the parameters of ``module`` that the ``optimizer`` group exempts from weight
    decay beyond norms and biases: depthwise convolution filters with decay_depthwise=false."""
    if split_options(cfg, OptimizerOptions)[0].decay_depthwise:
        return set()
    return {
        id(m.weight)
        for m in module.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    }


def _arguments(cfg: DictConfig, options: type) -> tuple[DictConfig, type, dict[str, Any]]:
    """(cnnlab's options, the ``_target_`` class, its keyword arguments) of a group."""
    own, args = split_options(cfg, options)
    args = OmegaConf.to_container(OmegaConf.create(args), resolve=True)
    return own, get_object(cfg._target_), args


def _default(cls: type, name: str) -> Any:
    param = inspect.signature(cls).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def group_settings(cfg: DictConfig) -> tuple[float, float, bool]:
    """(learning rate, weight decay, decay_norm_and_bias) of an ``optimizer`` group: the
    settings of each parameter group that cnnlab makes (the class's defaults where unset)."""
    own, cls, args = _arguments(cfg, OptimizerOptions)
    lr = args.get("lr", _default(cls, "lr"))
    weight_decay = args.get("weight_decay", _default(cls, "weight_decay") or 0.0)
    return lr, weight_decay, own.decay_norm_and_bias


def build_optimizer(
    model: nn.Module, cfg: DictConfig, lr_scales: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over the trainable parameters of ``model``; ``lr_scales``: the
    learning-rate factors of a transfer strategy (cnnlab.transfer.strategies.TransferPlan)."""
    _, cls, args = _arguments(cfg, OptimizerOptions)
    lr, weight_decay, decay_norm_and_bias = group_settings(cfg)
    groups = parameter_groups(
        model.named_parameters(),
        weight_decay,
        decay_norm_and_bias,
        lr,
        lr_scales,
        decay_exempt(model, cfg),
    )
    return _construct(cls, "optimizer", groups, args)


def _construct(cls: type, group: str, first: Any, args: dict[str, Any]) -> Any:
    """``cls(first, **args)``; the class's own refusal of a value is the user's error."""
    try:
        return cls(first, **args)
    except (ValueError, TypeError) as e:
        given = ", ".join(f"{k}={v}" for k, v in args.items() if k != "max_lr")
        raise CnnlabError(
            f"{group}._target_={cls.__module__}.{cls.__qualname__} refused its arguments "
            f"({given}): {e}"
        ) from None


def _in_interval_units(value: Any, scale: float) -> Any:
    if isinstance(value, (list, tuple, ListConfig)):
        return [_in_interval_units(v, scale) for v in value]
    return max(1, round(value * scale)) if value else 0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: DictConfig,
    total_steps: float,
    steps_per_epoch: int | None,
) -> Schedule | None:
    """The ``scheduler`` group's schedule for a run of ``total_steps`` optimizer steps of
    ``steps_per_epoch`` each (None: unknown, e.g. with trainer.max_epochs=-1); None when it
    leaves the learning rate alone."""
    own = split_options(cfg, SchedulerOptions)[0]
    if cfg.get("_target_") is None and not own.warmup:
        return None
    interval, unit = own.interval.value, own.unit.value
    scale = 1.0
    if interval != unit and (own.time_args or own.warmup):
        if not steps_per_epoch:
            raise CnnlabError(
                f"scheduler.unit={unit} with scheduler.interval={interval} needs the length of "
                "an epoch, which this run does not know (trainer.max_epochs=-1 with an iterable "
                f"data set?). Give the schedule in {interval}s (scheduler.unit={interval})."
            )
        scale = steps_per_epoch if unit == "epoch" else 1 / steps_per_epoch
    main, length = None, None
    if cfg.get("_target_") is not None:
        _, cls, args = _arguments(cfg, SchedulerOptions)
        for key in own.time_args:
            args[key] = _in_interval_units(args[key], scale)
        if own.length_arg:
            run = total_steps if interval == "step" else total_steps / (steps_per_epoch or 0)
            if not math.isfinite(run):
                raise CnnlabError(
                    f"scheduler.length_arg={own.length_arg} takes the run's length, and this run "
                    "has none: set trainer.max_epochs or trainer.max_steps."
                )
            length = (own.length_arg, max(1, math.ceil(run)))
            args[own.length_arg] = length[1]
            if args.get("pct_start", 0) * length[1] == 1:
                # torch's OneCycleLR divides by its warm-up's length in steps, pct_start * total
                # - 1: zero when the warm-up is exactly one step (4 steps at 0.25, a smoke run).
                # Half a step more gives the same schedule's shape without the division.
                args["pct_start"] = 1.5 / length[1]
        params = inspect.signature(cls).parameters
        if "max_lr" in params and "max_lr" not in args:  # one-cycle: the optimizer's lr peaks
            args["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        if "t_in_epochs" in params and "t_in_epochs" not in args:  # timm's
            args["t_in_epochs"] = interval == "epoch"
        main = _construct(cls, "scheduler", optimizer, args)
    return Schedule(
        optimizer,
        main,
        interval=interval,
        warmup=_in_interval_units(own.warmup, scale),
        warmup_factor=own.warmup_factor,
        warmup_mode=own.warmup_mode.value,
        length=length,
    )


def lightning_scheduler(schedule: Schedule, cfg: DictConfig) -> dict[str, Any]:
    """Lightning's lr_scheduler configuration for ``schedule``: when to step it and, for
    ReduceLROnPlateau, which logged metric to give it."""
    own = split_options(cfg, SchedulerOptions)[0]
    return {
        "scheduler": schedule,
        "interval": own.interval.value,
        "monitor": own.monitor,
        "reduce_on_plateau": own.monitor is not None,
    }


def add_param_groups(
    optimizer: torch.optim.Optimizer, schedule: Schedule | None, groups: list[dict]
) -> None:
    """Add ``groups`` to a running optimizer and its schedule (Schedule.add_param_groups)."""
    if schedule is not None:
        schedule.add_param_groups(groups)
        return
    for group in groups:
        optimizer.add_param_group(group)
