"""The index of runs by config hash under paths.output_root (runs.index): built by the first
search, kept up to date by the runs that start, and rebuilt from a scan when runs moved or
disappeared. Hand-written run dirs; milliseconds each."""

from __future__ import annotations

import shutil

from cnnlab.runs import planning
from cnnlab.runs.index import INDEX_DIR, RunIndex
from cnnlab.runs.record import fingerprint
from test_runs_planning import config, make_run


def entries(root) -> list[str]:
    return sorted(p.read_text() for p in (root / INDEX_DIR).glob("*/runs/*"))


def test_the_first_search_builds_the_index_and_later_ones_read_only_their_config(tmp_path):
    cfg = config(tmp_path)
    make_run(tmp_path, "a", "completed")
    make_run(tmp_path, "b", "completed", cfg=config(tmp_path, seed=9))
    make_run(tmp_path, "c", "skipped", same_as=str(tmp_path / "a"))  # a pointer: not indexed
    [(found, record)] = RunIndex(tmp_path).runs(fingerprint(cfg))
    assert found == tmp_path / "a" and record.status == "completed"
    assert entries(tmp_path) == ["a", "b"]
    assert (tmp_path / INDEX_DIR / "index").is_file()
    # From now on a search trusts the index: a run dir put into the tree by hand is not read...
    make_run(tmp_path, "copied", "completed")
    assert [d.name for d, _ in RunIndex(tmp_path).runs(fingerprint(cfg))] == ["a"]
    assert RunIndex(tmp_path).runs(fingerprint(config(tmp_path, seed=3))) == []
    # ...until the index is rebuilt, which deleting its marker asks for.
    (tmp_path / INDEX_DIR / "index").unlink()
    assert [d.name for d, _ in RunIndex(tmp_path).runs(fingerprint(cfg))] == ["a", "copied"]
    assert entries(tmp_path) == ["a", "b", "copied"]


def test_a_moved_or_deleted_run_makes_the_search_scan_and_rebuild_the_index(tmp_path):
    cfg = config(tmp_path)
    make_run(tmp_path, "a", "interrupted")
    make_run(tmp_path, "gone", "completed", cfg=config(tmp_path, seed=9))
    assert [d.name for d, _ in RunIndex(tmp_path).runs(fingerprint(cfg))] == ["a"]
    (tmp_path / "sweeps").mkdir()
    shutil.move(tmp_path / "a", tmp_path / "sweeps" / "a")
    shutil.rmtree(tmp_path / "gone")
    [(found, _)] = RunIndex(tmp_path).runs(fingerprint(cfg))
    assert found == tmp_path / "sweeps" / "a"
    assert entries(tmp_path) == ["sweeps/a"]


def test_a_run_that_starts_registers_itself_and_a_dry_run_index_writes_nothing(tmp_path):
    make_run(tmp_path, "old", "completed", cfg=config(tmp_path, seed=9))
    before = sorted(tmp_path.rglob("*"))
    read_only = RunIndex(tmp_path, writable=False)
    assert read_only.runs(fingerprint(config(tmp_path))) == []
    assert sorted(tmp_path.rglob("*")) == before
    # start() validates the config first: it needs optimizer and scheduler classes, which
    # planning itself never reads.
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    constant = {"_target_": None, "warmup": 0}
    job = planning.start(config(tmp_path, resume="auto", optimizer=sgd, scheduler=constant))
    try:
        assert job.action == planning.TRAIN
        assert entries(tmp_path) == ["new", "old"]
    finally:
        job.release()
