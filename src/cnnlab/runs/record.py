"""A run's record, ``results.json``: its status, identity and scores, read and written in one place.

:class:`RunRecord` is the file's JSON object with typed access to the keys that cnnlab itself
reads; every other key (scores, per-class accuracy, costs...) stays as it is, so the file's
format is the one users and tests read. It is written atomically (``paths.write_json``): a kill
during a write leaves the previous record whole.

A run's identity is :func:`fingerprint` of its resolved config without :data:`NOT_IDENTITY`,
the keys that say where a run writes, how it was started and where it reports, not what it
trains. ``cnnlab-compare`` leaves the same keys out when it looks for what differs between runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.paths import RESULTS_FILE, write_json


class Status(str, Enum):
    """A run's ``status``. A ``str`` enum: it is written to and compared with JSON strings."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    # A job whose config had completed before: it trained nothing.
    SKIPPED = "skipped"
    # A sweep job that never wrote its record (a status of the sweep summary, not of a file).
    MISSING = "missing"

    def __str__(self) -> str:
        return self.value


UNFINISHED = (Status.RUNNING, Status.INTERRUPTED)

# Config keys (dotted: a key and everything below it) that do not change what a run trains: what
# it is called, where it writes (paths, and the trainer's root dir, which follows them), how it was
# started (resume, resume_fallback, skip_completed), where it reports to (loggers), the claim an
# ablation experiment tests, the convergence rule that judges the trained run (a job skipped as
# a repeat keeps the judgement its run got), and the model costs that the W&B config carries.
# ``ckpt_path`` is part of the identity: a run started from a checkpoint trains something else
# than one started from scratch. Callbacks are too: ``callbacks=ema`` changes the weights.
NOT_IDENTITY = (
    "name",
    "paths",
    "trainer.default_root_dir",
    "resume",
    "resume_fallback",
    "skip_completed",
    "logger",
    "ablation",
    "convergence",
    "model_summary",
)
# results.json files keep the hashes of earlier cnnlab versions, which must stay valid: the keys
# left out then are nulled as they were; a key that joined the config later is dropped, so that
# its arrival changed no hash. (Dotted keys need nothing: they follow paths, whose every value
# is a placeholder.)
_HASHED_AS_NULL = ("name", "resume", "skip_completed", "logger", "ablation")


def is_identity(key: str) -> bool:
    """Whether the dotted config key ``key`` is part of a run's identity."""
    return not any(key == k or key.startswith(k + ".") for k in NOT_IDENTITY)


def fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved config without :data:`NOT_IDENTITY`, with every path relative to
    ``paths``: the same command run later, in another run dir, gets the same hash. Hydra's own
    node (timestamps, job numbers) is not part of ``cfg``."""
    text = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as :func:`fingerprint` hashes it."""
    # Plain values, without the schema, whose fields may not take the placeholders.
    tree = OmegaConf.to_container(cfg, enum_to_str=True)
    for key in tree.get("paths") or {}:
        tree["paths"][key] = f"<paths.{key}>"
    for key in NOT_IDENTITY:
        if key in _HASHED_AS_NULL:
            tree[key] = None
        elif "." not in key and key != "paths":
            tree.pop(key, None)
    texts = _interpolations(tree)
    if not texts:
        return tree
    joined = " ".join(texts)
    if _RELATIVE.search(joined) or not _RESOLVERS_OF_VALUES.issuperset(_RESOLVER.findall(joined)):
        return _resolved(tree)
    # Resolved in a config of the part they can read alone: building an OmegaConf config of a
    # whole run config took most of the time of a job's planning.
    _merge(tree, _resolved(_reachable(tree, texts)))
    return tree


# Resolvers that read only their arguments (and Hydra's own config), never other nodes of the
# config. An interpolation that calls another one, or a relative one (which may read a whole
# parent node), is resolved in a whole copy of the config.
_RESOLVERS_OF_VALUES = {
    "hydra",
    "now",
    "oc.env",
    "oc.decode",
    "cnnlab.class_count",
    "cnnlab.class_dirs",
    "cnnlab.unique_dir",
}
_RESOLVER = re.compile(r"\$\{\s*([\w.-]+)\s*:")
_RELATIVE = re.compile(r"\$\{\s*\.")


def _resolved(tree: dict[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.create(tree), resolve=True, enum_to_str=True)


def _interpolations(tree: Any) -> list[str]:
    """The strings in ``tree`` that OmegaConf resolves (or unescapes)."""
    if isinstance(tree, dict):
        return [text for value in tree.values() for text in _interpolations(value)]
    if isinstance(tree, list):
        return [text for value in tree for text in _interpolations(value)]
    return [tree] if isinstance(tree, str) and "${" in tree else []


def _reachable(tree: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """What resolving the interpolations ``texts`` of ``tree`` reads: every node whose key occurs
    in one of them, whole, and the interpolations themselves, with the keys that lead to them.
    (An absolute or relative node interpolation names each key on its way.)"""
    kept: dict[str, Any] = {}
    for key, value in tree.items():
        if any(str(key) in text for text in texts):
            kept[key] = value
        elif isinstance(value, dict):
            if inner := _reachable(value, texts):
                kept[key] = inner
        elif _interpolations(value):
            kept[key] = value
    return kept


def _merge(tree: dict[str, Any], resolved: dict[str, Any]) -> None:
    """Put the values of ``resolved``, a part of ``tree`` (:func:`_reachable`), into ``tree``."""
    for key, value in resolved.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def identity_differences(a: DictConfig, b: DictConfig) -> list[str]:
    """The dotted identity keys whose values differ between two configs."""
    flat_a, flat_b = flatten(identity(a)), flatten(identity(b))
    keys = sorted(set(flat_a) | set(flat_b))
    return [k for k in keys if flat_a.get(k) != flat_b.get(k) and is_identity(k)]


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys of the leaves of a nested dict; values as strings, for comparison."""
    if not isinstance(tree, dict):
        return {prefix: json.dumps(tree) if isinstance(tree, list) else str(tree)}
    flat: dict[str, str] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class RunRecord(dict):
    """results.json: the plain JSON object, with typed access to the keys cnnlab reads."""

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord | None:
        """The record of ``run_dir``; None if it has none or an unreadable one (a run killed
        during start-up, before it wrote its record whole)."""
        try:
            data = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(data) if isinstance(data, dict) else None

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / RESULTS_FILE, dict(self))

    @property
    def status(self) -> Status | None:
        try:
            return Status(self.get("status"))
        except ValueError:
            return None

    @status.setter
    def status(self, value: Status) -> None:
        self["status"] = Status(value).value

    @property
    def config_hash(self) -> str | None:
        return self.get("config_hash")

    @property
    def run_dir(self) -> Path | None:
        return Path(self["run_dir"]) if self.get("run_dir") else None

    @property
    def same_as(self) -> Path | None:
        """The earlier run a skipped job repeats."""
        return Path(self["same_as"]) if self.get("same_as") else None

    @property
    def continued_in(self) -> Path | None:
        """The run dir a multirun job continued an interrupted run in."""
        return Path(self["continued_in"]) if self.get("continued_in") else None

    @property
    def is_pointer(self) -> bool:
        """A job dir that points to the run that did the work (a skip, a continuation)."""
        return "same_as" in self or "continued_in" in self

    @property
    def tested_checkpoint(self) -> Path | None:
        return Path(self["tested_checkpoint"]) if self.get("tested_checkpoint") else None

    @property
    def error(self) -> str | None:
        return self.get("error")

    @property
    def wall_time_s(self) -> float:
        return float(self.get("wall_time_s", 0.0))

    @property
    def resumed(self) -> list[dict[str, Any]]:
        """One entry per earlier session of a continued run, with the status it ended with."""
        return list(self.get("resumed", []))

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED

    def mark_started(self) -> None:
        """Record this process as the run's owner (``pid``, ``host``), for :meth:`is_live`."""
        self.update(pid=os.getpid(), host=socket.gethostname())

    def is_live(self) -> bool:
        """Whether the process that wrote ``status: running`` still runs (on this machine)."""
        if self.status != Status.RUNNING or self.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(self.get("pid", 0)), 0)
        except (OSError, ValueError):
            return False
        return True
