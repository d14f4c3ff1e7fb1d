"""Lightning's Trainer defaults read from its source file, without importing Lightning (seconds
that ``cnnlab-train --help`` and ``--cfg job`` should not pay).

The file's path and layout are Lightning's internals: this is the config layer's counterpart of
cnnlab.training.compat (which config, below training, cannot import), pinned by
tests/test_compat.py against ``inspect.signature(lightning.Trainer)``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any


def trainer_defaults_from_source() -> dict[str, Any] | None:
    """lightning.Trainer's keyword arguments and their defaults, read from
    ``lightning/pytorch/trainer/trainer.py``; None where the source is not laid out as in
    Lightning 2 (the caller then imports Lightning)."""
    spec = importlib.util.find_spec("lightning")
    if spec is None or spec.origin is None:
        return None
    source = Path(spec.origin).parent / "pytorch" / "trainer" / "trainer.py"
    try:
        tree = ast.parse(source.read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
        init = next(n for n in cls.body if getattr(n, "name", None) == "__init__")
        args = init.args
        return {
            a.arg: ast.literal_eval(d)
            for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
        }
    except (OSError, SyntaxError, StopIteration, ValueError, TypeError):
        return None
