"""The file index of an image folder: every image's path, label and size, found by listing the
class folders in parallel (no file is opened), and cached in ``paths.cache_dir`` so that the next
run over an unchanged folder reads one file instead of listing a million names.

The cache is valid while no folder of the tree has changed: adding, removing or renaming a file
changes its folder's modification time, which the cache records for every folder it listed
(a file rewritten in place under the same name is not noticed). ``verify`` decodes files in
worker processes and keeps each verdict in the index, so that a second run decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from cnnlab.data.images import DECODE_ERRORS, decode
from cnnlab.errors import CnnlabError
from cnnlab.paths import atomic_write, write_json

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VERSION = 1
UNCHECKED, GOOD, BAD = 0, 1, 2
VERIFY_CHUNK = 256  # files per task of the verify pass: small enough for an even spread


class PathTable:
    """Many strings as one UTF-8 byte buffer and offsets. DataLoader workers read a path without
    touching the reference counts of a million Python strings (which makes a forked worker copy
    its parent's memory page by page), and the table saves to and loads from two arrays."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    @classmethod
    def of(cls, names: list[str]) -> PathTable:
        encoded = [n.encode() for n in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()

    def tolist(self) -> list[str]:
        data, ends = self.blob.tobytes(), self.offsets.tolist()
        return [data[a:b].decode() for a, b in zip(ends[:-1], ends[1:], strict=True)]


def _list_class(root: str, top: str) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """(relative path, size) of the image files under ``root/top`` and the modification time of
    each folder listed; hidden files and folders are left out."""
    files, folders, todo = [], {}, [top]
    while todo:
        rel = todo.pop()
        path = os.path.join(root, rel)
        # The folder's time is read before it is listed: a file added while listing makes the
        # recorded time stale, so the next run lists the folder again.
        folders[rel] = os.stat(path).st_mtime_ns
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    todo.append(f"{rel}/{entry.name}")
                elif entry.name.lower().endswith(EXTENSIONS) and entry.is_file():
                    files.append((f"{rel}/{entry.name}", entry.stat().st_size))
    files.sort()
    return files, folders


@dataclass
class FolderIndex:
    """The images of ``root/<class>/...``: ``names`` relative to ``root`` with their ``labels``
    (positions in ``classes``), ``sizes`` in bytes, and what decoding them found (``verdicts``
    of UNCHECKED, GOOD or BAD, ``reasons`` of the bad ones)."""

    root: str
    classes: list[str]
    names: PathTable
    labels: np.ndarray
    sizes: np.ndarray
    verdicts: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self[i])

    def __getitem__(self, i: int) -> str:
        return self.names[i]

    def bad(self) -> dict[int, str]:
        """Positions of the files known to be unreadable, with the reason: empty files, and
        those a verify pass could not decode."""
        return {int(i): self.reasons.get(int(i), "unreadable") for i in np.flatnonzero(
            self.verdicts == BAD)}  # fmt: skip

    def empty_classes(self) -> list[str]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return [name for name, n in zip(self.classes, counts, strict=True) if n == 0]


def scan(root: Path, classes: list[str], threads: int | None = None) -> FolderIndex:
    """List ``root/<class>/`` for each of ``classes`` in parallel threads (listing waits on the
    disk, or on a network file system, not on the CPU)."""
    threads = threads or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        listed = list(pool.map(lambda c: _list_class(str(root), c) if (root / c).is_dir()
                               else ([], {}), classes))  # fmt: skip
    names, sizes, labels, folders = [], [], [], {}
    for label, (files, seen) in enumerate(listed):
        names += [name for name, _ in files]
        sizes += [size for _, size in files]
        labels += [label] * len(files)
        folders.update(seen)
    sizes_a = np.asarray(sizes, dtype=np.int64)
    verdicts = np.where(sizes_a == 0, BAD, UNCHECKED).astype(np.int8)
    reasons = {int(i): "empty file (0 bytes)" for i in np.flatnonzero(sizes_a == 0)}
    return FolderIndex(
        str(root), list(classes), PathTable.of(names), np.asarray(labels, dtype=np.int64),
        sizes_a, verdicts, reasons, folders,
    )  # fmt: skip


def cache_file(cache_dir: Path, root: Path, classes: list[str]) -> Path:
    key = hashlib.sha256("\0".join([str(root.resolve()), *classes]).encode()).hexdigest()[:20]
    return cache_dir / "image_index" / f"{key}.npz"


def _json_array(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def save(index: FolderIndex, path: Path) -> None:
    folders = PathTable.of(list(index.folders))
    arrays = {
        "version": np.asarray(VERSION),
        "meta": _json_array({"root": index.root, "classes": index.classes,
                             "reasons": {str(k): v for k, v in index.reasons.items()}}),
        "names_blob": index.names.blob, "names_offsets": index.names.offsets,
        "labels": index.labels, "sizes": index.sizes, "verdicts": index.verdicts,
        "folders_blob": folders.blob, "folders_offsets": folders.offsets,
        "folders_mtime": np.asarray(list(index.folders.values()), dtype=np.int64),
    }  # fmt: skip
    # The whole and the killed run of a test, or the jobs of a sweep, list the same tree at once.
    atomic_write(path, lambda f: np.savez(f, **arrays), shared=True)


def load(path: Path, root: Path, classes: list[str]) -> FolderIndex | None:
    """The cached index if it is of this version, root and classes and no folder has changed."""
    try:
        with np.load(path) as saved:
            data = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, KeyError):
        return None
    if int(data["version"]) != VERSION:
        return None
    meta = json.loads(data["meta"].tobytes())
    if meta["root"] != str(root) or meta["classes"] != classes:
        return None
    folders = PathTable(data["folders_blob"], data["folders_offsets"]).tolist()
    for rel, mtime in zip(folders, data["folders_mtime"].tolist(), strict=True):
        try:
            if os.stat(os.path.join(root, rel)).st_mtime_ns != mtime:
                return None
        except OSError:
            return None
    # A class folder that did not exist when the index was made may exist now.
    if any((root / c).is_dir() for c in classes if c not in folders):
        return None
    return FolderIndex(
        str(root), classes, PathTable(data["names_blob"], data["names_offsets"]),
        data["labels"], data["sizes"], data["verdicts"].copy(),
        {int(k): v for k, v in meta["reasons"].items()},
        dict(zip(folders, data["folders_mtime"].tolist(), strict=True)),
    )  # fmt: skip


def carry_verdicts(new: FolderIndex, old: FolderIndex) -> None:
    """Keep ``old``'s verdicts for the files of ``new`` that have the same name and size."""
    before = {old[i]: i for i in np.flatnonzero(old.verdicts != UNCHECKED)}
    for i in range(len(new)):
        j = before.get(new[i])
        if j is not None and old.sizes[j] == new.sizes[i] and new.verdicts[i] == UNCHECKED:
            new.verdicts[i] = old.verdicts[j]
            if j in old.reasons:
                new.reasons[i] = old.reasons[j]


def folder_index(root: Path, classes: list[str], cache_dir: Path | None) -> FolderIndex:
    """The index of ``root`` for ``classes``: from the cache when the tree is unchanged, else
    listed anew (and cached, keeping the verdicts of files that are still there)."""
    path = cache_file(cache_dir, root, classes) if cache_dir else None
    cached = load(path, root, classes) if path and path.is_file() else None
    if cached is not None:
        log.info("image index of %s: %d files, from the cache %s", root, len(cached), path)
        return cached
    index = scan(root, classes)
    if path is not None:
        previous = _previous(path)
        if previous is not None:
            carry_verdicts(index, previous)
        save(index, path)
    return index


def _previous(path: Path) -> FolderIndex | None:
    """The stale cached index at ``path``, read without checking its folders."""
    try:
        with np.load(path) as saved:
            meta = json.loads(saved["meta"].tobytes())
            return FolderIndex(
                meta["root"], meta["classes"],
                PathTable(saved["names_blob"], saved["names_offsets"]), saved["labels"],
                saved["sizes"], saved["verdicts"],
                {int(k): v for k, v in meta["reasons"].items()},
            )  # fmt: skip
    except (OSError, ValueError, KeyError):
        return None


def check_files(paths: list[str], channels: int) -> list[str | None]:
    """None for each file that decodes completely, else why it does not."""
    verdicts = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                decode(f.read(), channels)
            verdicts.append(None)
        except DECODE_ERRORS as e:
            verdicts.append(f"{type(e).__name__}: {e}".splitlines()[0])
    return verdicts


def verify(index: FolderIndex, channels: int, workers: int, cache_dir: Path | None) -> int:
    """Decode every file not decoded before, in ``workers`` processes; record the verdicts in
    ``index`` (and its cache). Returns the number of files decoded."""
    todo = np.flatnonzero(index.verdicts == UNCHECKED)
    if len(todo) == 0:
        return 0
    chunks = [todo[s : s + VERIFY_CHUNK] for s in range(0, len(todo), VERIFY_CHUNK)]
    log.info("verifying %d images of %s in %d processes", len(todo), index.root, workers)
    # spawn: the parent may already run threads (torch's), which a fork would copy mid-lock.
    with ProcessPoolExecutor(max(1, workers), mp_context=get_context("spawn")) as pool:
        results = pool.map(
            check_files, [[index.path(i) for i in chunk] for chunk in chunks],
            [channels] * len(chunks),
        )  # fmt: skip
        for chunk, verdicts in zip(chunks, results, strict=True):
            for i, reason in zip(chunk.tolist(), verdicts, strict=True):
                index.verdicts[i] = GOOD if reason is None else BAD
                if reason is not None:
                    index.reasons[i] = reason
    if cache_dir is not None:
        save(index, cache_file(cache_dir, Path(index.root), index.classes))
    return len(todo)


def cached_stats(cache_dir: Path | None, root: Path, classes: list[str], key: str):
    """Normalisation statistics stored for this folder under ``key``, or None."""
    if cache_dir is None:
        return None
    path = cache_file(cache_dir, root, classes).with_suffix(".stats.json")
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError):
        return None


def store_stats(cache_dir: Path | None, root: Path, classes: list[str], key: str, stats) -> None:
    if cache_dir is None:
        return
    path = cache_file(cache_dir, root, classes).with_suffix(".stats.json")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    write_json(path, {**saved, key: stats}, shared=True)


def class_folders(folder: Path) -> list[str]:
    """The class folders of an image tree, sorted by name; at least two."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise CnnlabError(
            f"Cannot list the image folder {folder} ({e.strerror}): expected a tree "
            "root/<class>/<image>."
        ) from None
    if len(names) < 2:
        raise CnnlabError(
            f"{folder} has {len(names)} class folder(s) ({', '.join(names)}); "
            "classification needs at least 2: a tree root/<class>/<image>."
        )
    return names
