"""``cnnlab-summary``: per-layer output shapes, parameters and multiply-accumulates of a model.

    cnnlab-summary model=resnet20 input_shape=[3,32,32] num_classes=10

The model is built from the same config as ``cnnlab-train`` (any of its overrides apply);
``input_shape=[C,H,W]`` and ``num_classes=N`` set ``data.channels``, ``data.image_size`` and
``data.num_classes``, so ImageNet-sized figures can be printed whatever the data. MACs come from
one forward pass of a single image under PyTorch's ``FlopCounterMode`` (MACs = FLOPs / 2); like
the usual published figures they count convolutions and matrix products, not activations,
pooling or normalisation."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from cnnlab.cli.common import usage_error
from cnnlab.config.compose import compose_config
from cnnlab.errors import CnnlabError
from cnnlab.tracking.profile import Row, human, summarize

USAGE = (
    "usage: cnnlab-summary model=<name> [input_shape=[C,H,W]] [num_classes=N] "
    "[other cnnlab-train overrides]"
)


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
        usage_error("cnnlab-summary", str(e).split("Config search path:")[0])
    try:
        rows, total_params, total_macs = summarize(model, shape)
    except RuntimeError as e:
        usage_error(
            "cnnlab-summary", f"model={name} cannot take a 1x{'x'.join(map(str, shape))} input: {e}"
        )
    print_summary(rows, total_params, total_macs, f"{name}, input 1x{'x'.join(map(str, shape))}")


if __name__ == "__main__":
    sys.exit(main())
