"""The learning rate over a run: optional warm-up around any torch or timm scheduler."""

from __future__ import annotations

from typing import Any

import torch

# Keys that schedulers keep on each parameter group: learning rates (scaled for a new group)
# and momenta (copied).
GROUP_LRS = ("initial_lr", "max_lr", "min_lr")
GROUP_MOMENTA = ("momentum", "betas", "base_momentum", "max_momentum")


class Schedule:
    """Steps ``main`` (a scheduler of torch.optim.lr_scheduler or timm.scheduler; None: constant)
    every ``interval`` and multiplies its learning rates by a warm-up factor for the first
    ``warmup`` steps: linear from ``warmup_factor`` to 1, or constant at ``warmup_factor``.

    Warm-up runs on the schedule's own clock, as in timm and TensorFlow: a milestone at step
    32,000 is at step 32,000 whatever the warm-up. The main scheduler never sees the warm-up
    factor: its own learning rates are put back before each of its steps, so schedulers that
    scale the current rate (StepLR, ReduceLROnPlateau) and those that compute it (cosine, timm's)
    both follow their own curve. Lightning steps it through
    ``ClassificationModule.lr_scheduler_step``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        main: Any,
        interval: str = "step",
        warmup: int = 0,
        warmup_factor: float = 0.0,
        warmup_mode: str = "linear",
        length: tuple[str, int] | None = None,
    ) -> None:
        self.optimizer, self.main, self.interval = optimizer, main, interval
        self.warmup, self.warmup_factor, self.warmup_mode = warmup, warmup_factor, warmup_mode
        self.length = length
        self.last_step = 0
        self.main_lrs = [group["lr"] for group in optimizer.param_groups]
        self._warm()

    def factor(self) -> float:
        if self.last_step >= self.warmup:
            return 1.0
        if self.warmup_mode == "constant":
            return self.warmup_factor
        return self.warmup_factor + (1 - self.warmup_factor) * (self.last_step + 1) / self.warmup

    def _warm(self) -> None:
        factor = self.factor()
        for group, lr in zip(self.optimizer.param_groups, self.main_lrs, strict=True):
            group["lr"] = lr * factor

    def step(self, metric: float | torch.Tensor | None = None) -> None:
        groups = self.optimizer.param_groups
        for group, lr in zip(groups, self.main_lrs, strict=True):
            group["lr"] = lr
        self.last_step += 1
        if hasattr(self.main, "step_update"):  # timm's schedulers are told the time
            if self.interval == "step":
                self.main.step_update(self.last_step, metric)
            else:
                self.main.step(self.last_step, metric)
        elif metric is not None:  # ReduceLROnPlateau
            self.main.step(metric)
        elif self.main is not None:
            self.main.step()
        self.main_lrs = [group["lr"] for group in groups]
        self._warm()

    def add_param_groups(self, groups: list[dict]) -> None:
        """Add ``groups`` to the running optimizer. Each new group's ``lr`` is its peak: from now
        on it follows the rest of the schedule as the first group does, scaled by the ratio of
        the two peaks (the first group's peak: its max_lr, initial_lr or starting rate)."""
        first = self.optimizer.param_groups[0]
        peak = first.get("max_lr", first.get("initial_lr", self.main_lrs[0]))
        for group in groups:
            ratio = group["lr"] / peak
            self.optimizer.add_param_group(group)
            new = self.optimizer.param_groups[-1]
            new.update({k: first[k] * ratio for k in GROUP_LRS if k in first})
            new.update({k: first[k] for k in GROUP_MOMENTA if k in first})
            self.main_lrs.append(self.main_lrs[0] * ratio)
            new["lr"] = self.main_lrs[-1] * self.factor()
            _extend(self.main, ratio)

    def state_dict(self) -> dict[str, Any]:
        main = None if self.main is None else self.main.state_dict()
        return {"last_step": self.last_step, "main_lrs": self.main_lrs, "main": main}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step, self.main_lrs = state["last_step"], list(state["main_lrs"])
        if self.main is not None:
            self.main.load_state_dict(state["main"])
        # A resumed run of another length stretches the rest of the schedule to its own length
        # (ClassificationModule.on_load_checkpoint refuses the schedules that cannot stretch).
        if self.length is not None:
            setattr(self.main, *self.length)


def _extend(scheduler: Any, ratio: float) -> None:
    """Give ``scheduler`` (and the schedulers it chains) its per-group values for one more
    parameter group, from the first group's."""
    if scheduler is None:
        return
    for name in ("base_lrs", "_last_lr", "base_values"):  # torch's and timm's base rates
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            values.append(values[0] * ratio)
    for name in ("lr_lambdas", "min_lrs"):  # LambdaLR's functions, ReduceLROnPlateau's floors
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            values.append(values[0])
    for child in getattr(scheduler, "_schedulers", []):  # SequentialLR, ChainedScheduler
        _extend(child, ratio)
