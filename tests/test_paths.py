"""paths.atomic_write: a writer never leaves a half-written file, and writers of a shared file
(a cache, the runs index) in several processes do not rename each other's parts away."""

import multiprocessing as mp
from pathlib import Path

import pytest

from cnnlab.paths import atomic_write


def _write_many(path: str, byte: int, times: int) -> None:
    for _ in range(times):
        atomic_write(Path(path), lambda f: f.write(bytes([byte]) * 65536), shared=True)


def test_two_processes_writing_one_shared_file_at_once_both_succeed(tmp_path):
    path = tmp_path / "cache" / "index.npz"
    ctx = mp.get_context("fork")
    writers = [ctx.Process(target=_write_many, args=(str(path), b, 200)) for b in (1, 2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=60)
    assert [w.exitcode for w in writers] == [0, 0]  # a lost part raises FileNotFoundError
    data = path.read_bytes()
    assert len(data) == 65536 and len(set(data)) == 1  # whole, one writer's
    assert sorted(p.name for p in path.parent.iterdir()) == ["index.npz"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_part(tmp_path):
    path = tmp_path / "results.json"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
