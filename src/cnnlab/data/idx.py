"""Readers for the IDX format of the original MNIST-family files (LeCun et al., 1998)."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzip-compressed) into a tensor of its stored shape.

    Files are cached per process (keyed by path and modification time), so that the runs of a
    sweep in one process decompress them once. Treat the tensor as read-only.
    """
    return _read_idx(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx(name: str, mtime_ns: int) -> torch.Tensor:
    path = Path(name)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or dtype_code not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic number {magic:#010x})")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=_DTYPES[dtype_code], offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))
