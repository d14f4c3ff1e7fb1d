"""Which run a ``cnnlab-train`` call is: a new one, the continuation of an earlier one, or a skip.

* ``resume=<run dir>`` continues that run in its own directory, with the config it was started
  with, from its ``last.ckpt``;
* ``resume=auto`` continues the latest unfinished run with the same resolved config under
  ``paths.output_root`` (or starts a new run when there is none);
* in a multirun (``-m``) with ``skip_completed=true``, a job whose config has already completed is
  skipped (a small run dir with ``status: skipped`` and ``same_as``) and an interrupted one is
  continued; this job's own dir then records the outcome with ``continued_in``;
* ``ckpt_path=<file>`` starts a new run from a checkpoint.

When a launcher starts one process per device before cnnlab runs (SLURM tasks on several nodes,
torchrun, Lightning's ``strategy=ddp``), rank 0 alone decides and keeps the books; it writes its
decision into its Hydra dir (:data:`DECISION_FILE`), and the other ranks, started with the same
command line and so the same dir, train what it decided and write nothing.

Runs are identified by :func:`fingerprint`, stored in results.json as ``config_hash``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.config.job import _hydra_job
from cnnlab.config.schema import validate
from cnnlab.errors import CnnlabError
from cnnlab.paths import RESULTS_FILE, write_json, write_text
from cnnlab.runs.checkpoints import _checkpoint_step, _peek, read_checkpoint

# Top-level keys that do not change what a run trains: where it writes, what it is called, where
# it reports to, how it was started and the claim an ablation experiment tests.
NOT_IDENTITY = ("name", "resume", "ckpt_path", "skip_completed", "logger", "ablation")
UNFINISHED = ("running", "interrupted")
LAST = Path("checkpoints") / "last.ckpt"
DECISION_FILE = ".rank0.json"
# How long the other ranks wait for rank 0's decision (rank 0 may first have to scan many runs).
FOLLOW_TIMEOUT_S = 600.0
METRICS = Path("csv") / "metrics.csv"


def fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved config without what does not change the training (NOT_IDENTITY)
    and with every path relative to ``paths``: the same command run later, in another run dir,
    gets the same hash. Hydra's own node (timestamps, job numbers) is not part of ``cfg``."""
    # A plain copy, without the schema, whose fields may not take the placeholders.
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, enum_to_str=True))
    for key in cfg.paths:
        cfg.paths[key] = f"<paths.{key}>"
    for key in NOT_IDENTITY:
        cfg[key] = None
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_live(results: dict[str, Any]) -> bool:
    """Whether the process that wrote ``status: running`` still runs (on this machine)."""
    if results.get("status") != "running" or results.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(results.get("pid", 0)), 0)
    except (OSError, ValueError):
        return False
    return True


def earlier_runs(root: Path, config_hash: str) -> list[tuple[Path, dict[str, Any]]]:
    """Run dirs under ``root`` that trained this config themselves (not skip or pointer dirs),
    oldest first."""
    found = []
    for path in root.rglob(RESULTS_FILE):
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pointer = "same_as" in results or "continued_in" in results
        if results.get("config_hash") == config_hash and not pointer:
            found.append((path.parent, results))
    return sorted(found, key=lambda run: run[0].joinpath(RESULTS_FILE).stat().st_mtime)


def resumable(runs: list[tuple[Path, dict[str, Any]]]) -> tuple[Path, dict[str, Any]] | None:
    """The latest run that stopped before it finished and has a checkpoint to continue from."""
    for run_dir, results in reversed(runs):
        unfinished = results.get("status") in UNFINISHED and not is_live(results)
        if unfinished and (run_dir / LAST).is_file():
            return run_dir, results
    return None


@dataclass
class Plan:
    """What ``train`` does: train in ``run_dir`` from ``checkpoint`` (None: from scratch), or
    skip because ``same_as`` completed this config. ``pointer_dir`` is this job's own Hydra dir
    when the work happens elsewhere (a continued multirun job)."""

    config: DictConfig
    run_dir: Path
    results: dict[str, Any]
    checkpoint: str | None = None
    same_as: Path | None = None
    pointer_dir: Path | None = None
    earlier: dict[str, Any] = field(default_factory=dict)
    multirun: bool = False
    # A process of rank > 0: it trains as rank 0 decided and writes nothing.
    follower: bool = False


def _continue(cfg: DictConfig, run_dir: Path, earlier: dict[str, Any], fresh: Path) -> Plan:
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.resume = None
    history = [*earlier.get("resumed", []), {"status": earlier.get("status")}]
    results = {**earlier, "status": "running", "resumed": history}
    last = str(run_dir / LAST)
    return Plan(cfg, run_dir, results, checkpoint=last, earlier=earlier, pointer_dir=fresh)


def _stored_config(run_dir: Path) -> DictConfig:
    return OmegaConf.create(read_checkpoint(run_dir / LAST)["cnnlab"]["config"])


def _resume_dir(cfg: DictConfig, run_dir: Path, fresh: Path, overrides: list[str]) -> Plan:
    results_file = run_dir / RESULTS_FILE
    if not results_file.is_file():
        raise CnnlabError(
            f"resume={run_dir}: not a run dir (it has no {RESULTS_FILE}). Give a directory "
            "outputs/<date>/<time>_<name> written by cnnlab-train, resume=auto, or start a new "
            "run from a checkpoint file with ckpt_path=<file>."
        )
    earlier = json.loads(results_file.read_text())
    status = earlier.get("status")
    if status not in UNFINISHED or is_live(earlier):
        state = "is still running" if is_live(earlier) else f"has status {status}"
        raise CnnlabError(
            f"resume={run_dir}: that run {state}; only a run that stopped before it finished "
            f"(status {' or '.join(UNFINISHED)}) is continued. To train more from its "
            f"checkpoint, start a new run: ckpt_path={run_dir / LAST}."
        )
    if not (run_dir / LAST).is_file():
        raise CnnlabError(
            f"resume={run_dir}: the run stopped before it wrote {LAST}, so there is nothing to "
            "continue from; start it again."
        )
    others = [o for o in overrides if not o.startswith("resume=")]
    if others:
        raise CnnlabError(
            f"resume={run_dir} continues that run with the config it was started with, so it "
            f"takes no other overrides (got {' '.join(others)}). To train with another config "
            f"from its checkpoint, start a new run: ckpt_path={run_dir / LAST} {' '.join(others)}."
        )
    return _continue(_stored_config(run_dir), run_dir, earlier, fresh)


def plan(cfg: DictConfig, fresh: Path, multirun: bool, overrides: list[str]) -> Plan:
    """Decide what this call does. ``fresh`` is the run dir Hydra has just made for it."""
    config_hash = fingerprint(cfg)
    new = {"name": cfg.name, "status": "running", "run_dir": str(fresh), "config_hash": config_hash}
    new_plan = Plan(cfg, fresh, new, checkpoint=cfg.ckpt_path)
    resume = cfg.resume
    if resume and resume != "auto":
        path = Path(resume).expanduser()
        if path.is_file():
            raise CnnlabError(
                f"resume={resume!r} is a file; resume takes a run dir (it continues that run in "
                "its own directory) or auto. To start a new run from a checkpoint file, use "
                f"ckpt_path={resume}."
            )
        if not path.is_dir():
            raise CnnlabError(
                f"resume={resume!r} does not exist. Give a run dir (outputs/<date>/<time>_<name>) "
                "or resume=auto (the latest unfinished run with this config)."
            )
        return _resume_dir(cfg, path.resolve(), fresh, overrides)
    if not (resume == "auto" or (multirun and cfg.skip_completed)):
        return new_plan
    runs = earlier_runs(Path(cfg.paths.output_root), config_hash)
    completed = [run for run in runs if run[1].get("status") == "completed"]
    if multirun and cfg.skip_completed and completed:
        return Plan(cfg, fresh, new, same_as=completed[-1][0], earlier=completed[-1][1])
    found = resumable(runs)
    if found is None:
        return new_plan
    return _continue(cfg, found[0], found[1], fresh)


def launch_rank() -> int:
    """This process's rank when a launcher started one process per device before cnnlab runs
    (SLURM tasks, torchrun, Lightning re-running the command for ``strategy=ddp``); else 0."""
    ranks = [os.environ.get(v, "") for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")]
    return max((int(r) for r in ranks if r.isdigit()), default=0)


def follow_rank_zero(cfg: DictConfig, fresh: Path) -> Plan:
    """The plan of a process of rank > 0: rank 0's, read from its Hydra dir (the same dir, as
    every rank runs the same command line)."""
    path = fresh / DECISION_FILE
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while not path.is_file():
        if time.monotonic() > deadline:
            raise CnnlabError(
                f"Rank {launch_rank()} waited {FOLLOW_TIMEOUT_S:.0f} s for rank 0 to decide what "
                f"to train in {fresh} ({DECISION_FILE}). Every rank must run the same command "
                "line with the same run dir: set hydra.run.dir (or use a multirun launcher, whose "
                "job dirs are fixed at submission)."
            )
        time.sleep(0.2)
    decided = json.loads(path.read_text())
    run_dir = Path(decided["run_dir"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.resume = None
    same_as = Path(decided["same_as"]) if decided["same_as"] else None
    return Plan(cfg, run_dir, {}, decided["checkpoint"], same_as, follower=True)


def start(cfg: DictConfig) -> Plan:
    """The plan of this call, with results.json (status running) written where it will train.
    A config error is recorded as a failed run in the dir Hydra made, and raised."""
    fresh = Path(cfg.paths.output_dir)
    if launch_rank() > 0:
        return follow_rank_zero(cfg, fresh)
    fresh.mkdir(parents=True, exist_ok=True)
    if (fresh / RESULTS_FILE).exists():
        raise CnnlabError(
            f"{fresh} already holds a run (it has a {RESULTS_FILE}), and cnnlab never writes "
            "over a run. Leave hydra.run.dir at its default (a new directory per run) or name an "
            f"empty one; to continue that run, use resume={fresh}."
        )
    multirun, overrides = _hydra_job()
    try:
        validate(cfg)
        job = plan(cfg, fresh, multirun, overrides)
    except CnnlabError as e:
        failed = {"name": cfg.name, "status": "failed", "run_dir": str(fresh), "error": str(e)}
        write_json(fresh / RESULTS_FILE, failed)
        raise
    job.multirun = multirun
    same_as = None if job.same_as is None else str(job.same_as)
    decision = {"run_dir": str(job.run_dir), "checkpoint": job.checkpoint, "same_as": same_as}
    write_json(fresh / DECISION_FILE, decision)
    if job.same_as is None:
        job.results.update(pid=os.getpid(), host=socket.gethostname())
        write_json(job.run_dir / RESULTS_FILE, job.results)
        if job.earlier:
            set_aside_metrics(job.run_dir, _checkpoint_step(job.run_dir / LAST))
    return job


def finish(job: Plan, results: dict[str, Any]) -> None:
    """After a session: the continued run's metrics in one file, and this job's own dir either
    pointing to it (in a multirun, for the sweep's summary) or removed, as it holds only what
    Hydra and rank 0 put in it."""
    if job.earlier:
        merge_metrics(job.run_dir)
    fresh = job.pointer_dir
    if fresh is None or not fresh.is_dir():
        return
    if job.multirun:
        pointer = {**results, "run_dir": str(fresh), "continued_in": str(job.run_dir)}
        write_json(fresh / RESULTS_FILE, pointer)
    elif all(p.name in (".hydra", DECISION_FILE) or p.suffix == ".log" for p in fresh.iterdir()):
        shutil.rmtree(fresh)


def epochs_done(trainer, run_dir: Path) -> int:
    """Completed epochs. Spawned DDP workers do not pass theirs back to this process's trainer:
    then they come from last.ckpt, which the workers write at every epoch end."""
    if trainer.current_epoch or trainer.world_size == 1 or not (run_dir / LAST).is_file():
        return trainer.current_epoch
    # Saved at the epoch end, after Lightning counted the epoch processed, before completed.
    return _peek(run_dir / LAST)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


def skip(plan: Plan) -> dict[str, Any]:
    """Write the skip marker of a job whose config has already completed; train nothing."""
    if plan.follower:
        return {"status": "skipped", "same_as": str(plan.same_as)}
    # The earlier scores too: a sweeper (Optuna) reads the job's value from them.
    scores = {k: plan.earlier[k] for k in ("best_val_acc", "test_acc") if k in plan.earlier}
    results = {**plan.results, **scores, "status": "skipped", "same_as": str(plan.same_as)}
    write_json(plan.run_dir / RESULTS_FILE, results)
    print(f"cnnlab: skipped, this config has already completed in {plan.same_as}", flush=True)
    return results


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def set_aside_metrics(run_dir: Path, resumed_step: int) -> None:
    """Before a continued session: keep the earlier rows of metrics.csv (Lightning's CSV logger
    deletes the file), without those logged after the checkpoint, which are logged again."""
    kept = run_dir / METRICS.with_suffix(".csv.earlier")
    rows = _rows(kept) + _rows(run_dir / METRICS)
    rows = [r for r in rows if not r.get("step") or int(float(r["step"])) < resumed_step]
    _write_rows(kept, rows)
    (run_dir / METRICS).unlink(missing_ok=True)


def merge_metrics(run_dir: Path) -> None:
    """After a continued session: metrics.csv = the earlier rows followed by this session's."""
    kept = run_dir / METRICS.with_suffix(".csv.earlier")
    if kept.is_file():
        _write_rows(run_dir / METRICS, _rows(kept) + _rows(run_dir / METRICS))
        kept.unlink()


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())
