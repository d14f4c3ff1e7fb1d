"""results.json: the machine-readable summary of one run, written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_FILE = "results.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: never a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)


def print_summary(results: dict[str, Any]) -> None:
    table = Table(title=f"cnnlab run: {results.get('name', '')} ({results['status']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "test_acc",
        "test_acc_tta",
        "test_acc_top5",
        "test_loss",
        "best_val_acc",
        "epochs",
        "params",
    ):
        value = results.get(key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isnan(value):
            value = f"{value:.4f}"
        table.add_row(key, str(value))
    table.add_row("wall_time_s", f"{results['wall_time_s']:.1f}")
    console = Console(soft_wrap=True)
    console.print(table)
    # On a line of its own, so that it is never cut and can be copied.
    console.print(f"run_dir: {results['run_dir']}", highlight=False)
