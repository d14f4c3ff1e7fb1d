"""An index of the runs under ``paths.output_root`` by config hash: the search for earlier runs of
a config (``resume=auto``, a multirun's skip/continue planning) reads that config's runs alone,
not every results.json of the tree, so that planning a job costs the same after 10 runs or
100,000 (a 1,000-job sweep re-run used to read a million files).

``<output_root>/.cnnlab/<config_hash>/runs/<id>`` names one run dir of that config (relative to
``output_root``, so that a tree copied or mounted elsewhere keeps its index), one small file per
run, written atomically: processes that register runs at once never lose each other's entries,
and no lock is needed. The per-config dir is the one that holds the config's planning lock.
A run registers when it first records its status (``runs.planning.start``).

``<output_root>/.cnnlab/index`` marks the index complete: a full scan writes it after it has
registered every run it found. The index is trusted while that marker exists and every entry of
the config names a run dir whose results.json has that config; otherwise (runs of a cnnlab
without the index, a tree copied without its ``.cnnlab``, a run dir moved or deleted since) the
search scans the tree as before and rebuilds the index. A run copied into an indexed tree by
hand is seen once the index is rebuilt: delete ``<output_root>/.cnnlab/index``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from cnnlab.paths import RESULTS_FILE, write_text
from cnnlab.runs.record import RunRecord

INDEX_DIR = ".cnnlab"
COMPLETE = "index"
RUNS = "runs"


def _entries(root: Path, config_hash: str) -> Path:
    return root / INDEX_DIR / config_hash / RUNS


def _entry_dir(root: Path, entry: Path) -> Path | None:
    """The run dir an entry names; None if a rebuild has just removed it."""
    try:
        return root / entry.read_text()
    except OSError:
        return None


def _entry_name(relative: str) -> str:
    return hashlib.sha256(relative.encode()).hexdigest()[:16]


def _relative(root: Path, run_dir: Path) -> str | None:
    try:
        return str(Path(os.path.abspath(run_dir)).relative_to(os.path.abspath(root)))
    except ValueError:
        return None  # not under output_root: no search there would find it either


def register(root: Path, run_dir: Path, config_hash: str | None) -> None:
    """Enter ``run_dir`` as a run of ``config_hash`` in the index of ``root`` (once)."""
    relative = _relative(root, run_dir)
    if config_hash is None or relative is None:
        return
    entry = _entries(root, config_hash) / _entry_name(relative)
    if not entry.is_file():
        write_text(entry, relative)


def _is_run_of(record: RunRecord | None, config_hash: str) -> bool:
    return record is not None and record.config_hash == config_hash and not record.is_pointer


class RunIndex:
    """The runs of each config under ``root``: from the index while it holds, else from one scan
    of the tree, which (``writable``) rebuilds the index. A read-only one (a dry run) scans at
    most once and writes nothing."""

    def __init__(self, root: Path, writable: bool = True) -> None:
        self.root = Path(root)
        self.writable = writable
        self._scanned: dict[str, list[Path]] | None = None

    def runs(self, config_hash: str) -> list[tuple[Path, RunRecord]]:
        """Run dirs that trained this config themselves (not skip or pointer dirs), oldest first
        (by their results.json's time)."""
        found = self._lookup(config_hash)
        if found is None:
            found = [(d, RunRecord.read(d)) for d in self.scan().get(config_hash, [])]
            found = [(d, r) for d, r in found if _is_run_of(r, config_hash)]
        dated = [((d / RESULTS_FILE).stat().st_mtime, d, r) for d, r in found]
        return [(d, r) for _, d, r in sorted(dated, key=lambda f: f[0])]

    def _lookup(self, config_hash: str) -> list[tuple[Path, RunRecord]] | None:
        """The config's runs from the index; None if the index is incomplete or out of date."""
        if self._scanned is not None or not (self.root / INDEX_DIR / COMPLETE).is_file():
            return None
        try:
            entries = list(_entries(self.root, config_hash).iterdir())
        except FileNotFoundError:
            return []  # the index is complete: this config has no run
        found = []
        for entry in entries:
            run_dir = _entry_dir(self.root, entry)
            record = None if run_dir is None else RunRecord.read(run_dir)
            if not _is_run_of(record, config_hash):
                return None  # moved, deleted or replaced since it registered
            found.append((run_dir, record))
        return found

    def scan(self) -> dict[str, list[Path]]:
        """Every run dir under ``root`` by config hash, read from the tree (once per index);
        rebuilds the index when writable."""
        if self._scanned is None:
            scanned: dict[str, list[Path]] = {}
            for path in self.root.rglob(RESULTS_FILE):
                record = RunRecord.read(path.parent)
                if record is not None and record.config_hash and not record.is_pointer:
                    scanned.setdefault(record.config_hash, []).append(path.parent)
            self._scanned = scanned
            if self.writable:
                self._rebuild(scanned)
        return self._scanned

    def _rebuild(self, scanned: dict[str, list[Path]]) -> None:
        for config_hash, run_dirs in scanned.items():
            for run_dir in run_dirs:
                register(self.root, run_dir, config_hash)
        index = self.root / INDEX_DIR
        for folder in index.glob(f"*/{RUNS}"):
            for entry in folder.iterdir():
                # Checked now, not against the scan: a run that registered during the scan keeps
                # its entry.
                run_dir = _entry_dir(self.root, entry)
                record = None if run_dir is None else RunRecord.read(run_dir)
                if not _is_run_of(record, folder.parent.name):
                    entry.unlink(missing_ok=True)
        runs = sum(map(len, scanned.values()))
        note = {"complete_since": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs_found": runs}
        # Two jobs of a parallel sweep may both complete the index at once (a FileNotFoundError
        # in a job of claim 6's sweep when they shared one part name); the last rename wins.
        write_text(index / COMPLETE, json.dumps(note) + "\n", shared=True)
