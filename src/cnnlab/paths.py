"""Where cnnlab's files live and how they are written: the config directory, the names of the
files in a run directory, and the one atomic writer that every file of a run goes through."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

RESULTS_FILE = "results.json"
CHECKPOINTS = "checkpoints"
LAST = Path(CHECKPOINTS) / "last.ckpt"
METRICS = Path("csv") / "metrics.csv"
# Rank 0's decision of what a launcher-started job trains, read by the other ranks.
DECISION_FILE = ".rank0.json"


def config_dir() -> str:
    """conf/ inside an installed wheel, else the repository's top-level conf/."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).parents[2] / "conf")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], fsync: bool = False,
                 shared: bool = False) -> None:  # fmt: skip
    """Call ``write`` on ``<path>.part`` in the same folder, then rename it over ``path``: a kill
    during the write leaves the previous file whole, never a half-written one. ``fsync`` also
    flushes the file to the disk first, so that a power cut cannot leave it empty (checkpoints).

    ``shared``: other processes may write the same file at the same moment (a cache, the runs
    index), so the part is ``<path>.<pid>.part`` and no writer renames another's away. A file
    of one run keeps the one part name, which the next write replaces after a kill."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".{os.getpid()}.part" if shared else ".part"
    part = path.with_name(path.name + suffix)
    try:
        with open(part, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, shared: bool = False) -> None:
    atomic_write(path, lambda f: f.write(text.encode()), shared=shared)


def write_json(path: Path, data: Any, shared: bool = False) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n", shared=shared)
