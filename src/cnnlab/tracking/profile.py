"""Model profiling: per-layer output shapes, parameters and multiply-accumulates from one
forward pass of a single image under PyTorch's ``FlopCounterMode`` (MACs = FLOPs / 2); like the
usual published figures they count convolutions and matrix products, not activations, pooling or
normalisation. Used by ``cnnlab-summary`` and by the training run's model table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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
