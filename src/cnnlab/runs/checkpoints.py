"""Checkpoint files of a run: finding the one a run was tested with, reading one safely, and
peeking at the counters inside without loading the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.runs.record import RunRecord


def find_checkpoint(source: Path) -> Path:
    """``source`` if it is a file; for a run directory, the checkpoint its test_acc came from."""
    if not source.exists():
        raise CnnlabError(
            f"{source} does not exist. Give a run directory (outputs/<date>/<time>_<name>) or a "
            "checkpoint file of one (<run dir>/checkpoints/*.ckpt)."
        )
    if source.is_file():
        return source
    folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    record = RunRecord.read(source)
    tested = None if record is None else record.tested_checkpoint
    # By name: the recorded path is absolute and goes stale when a run dir is moved.
    if tested and (folder / tested.name).is_file():
        return folder / tested.name
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    candidates = [*reversed(best), folder / "last.ckpt", *sorted(folder.glob("*.ckpt"))]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise CnnlabError(
            f"{source} holds no checkpoint: expected {folder}/best-*.ckpt or last.ckpt, which "
            "cnnlab-train writes into every run directory."
        )
    return found


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents; only tensors and plain data are unpickled (weights_only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign files fail in many ways: UnpicklingError, KeyError...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(
            f"{path} is not a checkpoint that PyTorch can read ({first_line}). Give a .ckpt "
            "file written by cnnlab-train, or its run directory."
        ) from None
    info = checkpoint.get("cnnlab") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict) or not info.get("config") or "state_dict" not in checkpoint:
        raise CnnlabError(
            f"{path} is a PyTorch file but not a cnnlab checkpoint: it lacks the 'cnnlab' entry "
            "with the run's config that cnnlab-train stores in every checkpoint, so cnnlab "
            "cannot tell which model it holds."
        )
    return checkpoint


def _checkpoint_step(path: Path) -> int:
    return int(_peek(path)["global_step"])


def _peek(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, mapped rather than read: cheap for the counters it holds."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
