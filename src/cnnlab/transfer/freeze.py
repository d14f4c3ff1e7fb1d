"""Freezing parts of a network, with BatchNorm that stays frozen.

A frozen parameter has ``requires_grad=False``. A frozen BatchNorm layer must also normalise
with its stored statistics and never update them, i.e. stay in eval mode; but the Lightning
Trainer calls ``model.train()`` at every epoch and restores each submodule's ``training`` flag
after validation, which puts such a layer back into training mode (the bug of Lightning's
``BaseFinetuning``, #15062). Keras instead runs a non-trainable BatchNorm in inference mode.

cnnlab does as Keras: a frozen BatchNorm layer's class becomes a subclass of its own (named
``Frozen<Class>``, so printing the model shows it) whose ``training`` flag is always False,
whatever sets it. (A property is the only way: Lightning restores the flags by assigning
``module.training``, and a hook would leave the flag True between forward passes.) Its
parameters, buffers, state-dict keys and device stay as they were, and unfreezing restores the
original class, which the frozen one names.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from torch import nn

# The public BatchNorm classes (torch's common base of them is private); timm's BatchNormAct2d
# and torchvision's models use these.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class FrozenNorm:
    """Mixed in before a BatchNorm class: the layer is in eval mode for good."""

    @property
    def training(self) -> bool:
        return False

    @training.setter
    def training(self, mode: bool) -> None:
        pass  # nn.Module.train() and Lightning's mode restore set it; a frozen layer ignores them


@functools.cache
def frozen_class(cls: type[nn.Module]) -> type[nn.Module]:
    return type(
        f"Frozen{cls.__name__}", (FrozenNorm, cls), {"__module__": __name__, "unfrozen": cls}
    )


def is_frozen_norm(module: nn.Module) -> bool:
    return isinstance(module, FrozenNorm)


def freeze_norm(module: nn.Module) -> None:
    """Put a BatchNorm layer in eval mode for good and stop training its scale and shift."""
    if not is_frozen_norm(module):
        module.__class__ = frozen_class(type(module))
    for p in module.parameters(recurse=False):
        p.requires_grad_(False)


def unfreeze_norm(module: nn.Module, training: bool) -> None:
    if is_frozen_norm(module):
        module.__class__ = module.unfrozen
        module.training = training
    for p in module.parameters(recurse=False):
        p.requires_grad_(True)


def freeze(modules: Iterable[nn.Module]) -> None:
    """Freeze every parameter of ``modules``; their BatchNorm layers normalise with the stored
    statistics and never update them."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, BATCH_NORMS):
                freeze_norm(m)
        for p in module.parameters():
            p.requires_grad_(False)


def unfreeze(modules: Iterable[nn.Module], keep_norm_frozen: bool, training: bool) -> None:
    """Train ``modules`` again; with ``keep_norm_frozen`` their BatchNorm layers stay frozen
    (the EfficientNet fine-tuning advice: training them on the small new data set first wrecks
    the statistics the rest of the network relies on)."""
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)
        for m in module.modules():
            if isinstance(m, BATCH_NORMS) and keep_norm_frozen:
                freeze_norm(m)
            elif isinstance(m, BATCH_NORMS):
                unfreeze_norm(m, training)


def norm_mode(module: nn.Module) -> str:
    """How the BatchNorm layers of ``module`` normalise: "frozen", "train", "mixed" or "-"."""
    modes = {
        "frozen" if is_frozen_norm(m) else "train"
        for m in module.modules()
        if isinstance(m, BATCH_NORMS)
    }
    if not modes:
        return "-"
    return modes.pop() if len(modes) == 1 else "mixed"


def parameter_table(model: nn.Module) -> str:
    """Per top-level module: trainable and frozen parameters and its BatchNorm mode."""
    rows = [("module", "trainable", "frozen", "BatchNorm")]
    totals = [0, 0]
    for name, child in model.named_children():
        trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in child.parameters() if not p.requires_grad)
        if trainable == frozen == 0:
            continue
        totals = [totals[0] + trainable, totals[1] + frozen]
        rows.append((name, f"{trainable:,}", f"{frozen:,}", norm_mode(child)))
    rows.append(("total", f"{totals[0]:,}", f"{totals[1]:,}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    # Names and modes left-aligned, counts right-aligned.
    align = (str.ljust, str.rjust, str.rjust, str.ljust)
    lines = ["  ".join(a(c, w) for a, c, w in zip(align, r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
