"""``cnnlab-summary``: per-layer output shapes, parameters and multiply-accumulates of a model.

    cnnlab-summary model=resnet20 input_shape=[3,32,32] num_classes=10

The model is built from the same config as ``cnnlab-train`` (any of its overrides apply);
``input_shape=[C,H,W]`` and ``num_classes=N`` set ``data.channels``, ``data.image_size`` and
``data.num_classes``, so ImageNet-sized figures can be printed whatever the data. MACs come from
one forward pass of a single image under PyTorch's ``FlopCounterMode`` (MACs = FLOPs / 2); like
the usual published figures they count convolutions and matrix products, not activations,
pooling or normalisation.
"""

from __future__ import annotations

import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.config import register, validate
from cnnlab.errors import CnnlabError
from cnnlab.train import config_dir

USAGE = (
    "usage: cnnlab-summary model=<name> [input_shape=[C,H,W]] [num_classes=N] "
    "[other cnnlab-train overrides]"
)


@dataclass(frozen=True)
class Row:
    """One module of the table; ``params`` and ``macs`` are its own, not its children's."""

    name: str
    type: str
    output_shape: str
    params: int
    macs: int


def _shape(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return str(list(output.shape))
    if isinstance(output, (tuple, list)):
        return ", ".join(_shape(o) for o in output)
    return type(output).__name__


def summarize(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[Row], int, int]:
    """Run one (1, C, H, W) zero image through ``model`` in eval mode; return the table rows,
    the total number of parameters and the total MACs.

    A row is a leaf module that ran, or any module with parameters or operations of its own
    (e.g. a class token, or a matrix product in a block's forward). A module's own MACs are its
    count less those of the nearest descendants that ran, so containers iterated without being
    called (``nn.ModuleList``) attribute correctly.
    """
    names = {module: name for name, module in model.named_modules()}
    shapes: dict[nn.Module, list[str]] = defaultdict(list)

    def record(module: nn.Module, args: object, output: object) -> None:
        shapes[module].append(_shape(output))

    handles = [module.register_forward_hook(record) for module in names]
    first = next(model.parameters(), None)
    x = torch.zeros(
        1,
        *input_shape,
        dtype=first.dtype if first is not None else None,
        device=first.device if first is not None else None,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    # FlopCounterMode keys each module by its root class name and qualified name.
    root = type(model).__name__
    flops = {key: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}

    def total_flops(module: nn.Module) -> int:
        return flops.get(f"{root}.{names[module]}" if names[module] else root, 0)

    def descendants_flops(module: nn.Module) -> int:
        return sum(
            total_flops(child) if child in shapes else descendants_flops(child)
            for child in module.children()
        )

    rows = []
    for module, name in names.items():
        ran = module in shapes
        params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = (total_flops(module) - descendants_flops(module)) // 2 if ran else 0
        leaf = next(module.children(), None) is None
        if (leaf and ran) or params or macs:
            calls = shapes[module]
            shape = "(not run)" if not ran else calls[0]
            if len(calls) > 1:
                shape += f" (x{len(calls)} calls)"
            rows.append(Row(name or root, type(module).__name__, shape, params, macs))
    total_params = sum(p.numel() for p in model.parameters())
    return rows, total_params, counter.get_total_flops() // 2


def human(n: int) -> str:
    """1234567 -> '1.23 M'."""
    for threshold, unit in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f} {unit}"
    return str(n)


def _ints(key: str, value: str, count: int, example: str) -> list[int]:
    numbers = re.fullmatch(r"\[?\s*(\d+(?:\s*,\s*\d+)*)\s*\]?", value)
    sizes = [int(n) for n in numbers.group(1).split(",")] if numbers else []
    if len(sizes) != count or not all(sizes):
        what = "a positive integer" if count == 1 else f"{count} positive integers"
        raise CnnlabError(f"{key}={value!r}: expected {what}, e.g. {key}={example}.")
    return sizes


def translate(overrides: Sequence[str]) -> tuple[list[str], tuple[int, int, int] | None]:
    """Turn ``input_shape=[C,H,W]`` and ``num_classes=N`` into the data overrides they stand
    for; return the overrides for Hydra and the (C, H, W) input, if one was given."""
    out: list[str] = []
    shape = None
    for arg in overrides:
        key, eq, value = arg.partition("=")
        if eq and key == "input_shape":
            channels, height, width = _ints(key, value, 3, "[3,224,224]")
            shape = (channels, height, width)
            out += [f"data.channels={shape[0]}", f"data.image_size={shape[1]}"]
        elif eq and key == "num_classes":
            (classes,) = _ints(key, value, 1, "1000")
            out.append(f"data.num_classes={classes}")
        else:
            out.append(arg)
    return out, shape


def compose_config(overrides: Sequence[str], output_dir: str | None = None) -> DictConfig:
    """The validated, resolved config ``cnnlab-train OVERRIDES`` would run, composed without
    starting a run (nothing is written), with its run dir at ``output_dir`` (default: here)."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.output_dir = output_dir or os.getcwd()
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg)


def build(overrides: Sequence[str]) -> tuple[str, nn.Module, tuple[int, int, int]]:
    """(model name, model, (C, H, W) input) for the ``cnnlab-summary`` arguments ``overrides``."""
    hydra_overrides, shape = translate(overrides)
    cfg = compose_config(hydra_overrides)
    size = cfg.data.image_size
    shape = shape or (cfg.data.channels, size, size)
    return HydraConfig.get().runtime.choices.model, instantiate(cfg.model), shape


def print_summary(rows: list[Row], total_params: int, total_macs: int, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("Layer", overflow="fold")
    table.add_column("Type")
    table.add_column("Output shape", overflow="fold")
    table.add_column("Params", justify="right")
    table.add_column("MACs", justify="right")
    for row in rows:
        table.add_row(row.name, row.type, row.output_shape, f"{row.params:,}", f"{row.macs:,}")
    # Piped output goes to files and scripts: do not wrap it at a default 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    print(f"Total params: {total_params} ({human(total_params)})")
    print(f"Total MACs: {total_macs} ({human(total_macs)})")


def _error(message: str) -> NoReturn:
    print(f"cnnlab-summary: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        print(__doc__)
        return
    try:
        name, model, shape = build(args)
    except (HydraException, OmegaConfBaseException, CnnlabError) as e:
        # Hydra ends a missing-option message with its search path: noise on one line.
        _error(str(e).split("Config search path:")[0])
    try:
        rows, total_params, total_macs = summarize(model, shape)
    except RuntimeError as e:
        _error(f"model={name} cannot take a 1x{'x'.join(map(str, shape))} input: {e}")
    print_summary(rows, total_params, total_macs, f"{name}, input 1x{'x'.join(map(str, shape))}")


if __name__ == "__main__":
    main()
