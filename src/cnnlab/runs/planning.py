"""Which run a ``cnnlab-train`` call is: a new one, the continuation of an earlier one, or a skip.

* ``resume=<run dir>`` continues that run in its own directory, with the config it was started
  with, from its ``last.ckpt``; overrides of keys that are no part of the run's identity (loggers,
  paths, the name) are taken, others are refused with the keys that differ;
* ``resume=auto`` continues the latest unfinished run with the same resolved config under
  ``paths.output_root`` (or starts a new run when there is none);
* in a multirun (``-m``) with ``skip_completed=true``, a job whose config has already completed is
  skipped (a small run dir with ``status: skipped`` and ``same_as``) and an interrupted one is
  continued; this job's own dir then records the outcome with ``continued_in``;
* a job dir that already holds this config's run (a multirun re-run in a fixed
  ``hydra.sweep.dir``, or a requeued job under ``resume=auto`` in a fixed ``hydra.run.dir``) is
  planned in place: completed, it is skipped; interrupted or failed, it is continued from its
  newest whole checkpoint (or started again if it never wrote one);
* ``ckpt_path=<file>`` starts a new run from a checkpoint.

A run that was killed during start-up (no results.json, or ``status: running`` with a dead owner
and no checkpoint) counts as never started. Every run holds the lock of its dir while it trains
(:mod:`cnnlab.runs.lock`); a run dir locked by another process is left to it, and a search for
earlier runs of a config holds the config's lock, so that two processes never train one job twice.

When a launcher starts one process per device before cnnlab runs (SLURM tasks on several nodes,
torchrun, Lightning's ``strategy=ddp``), rank 0 alone decides and keeps the books; it writes its
decision into its Hydra dir (:data:`DECISION_FILE`), and the other ranks, started with the same
command line and so the same dir, train what it decided and write nothing. The decision also
tells a sweep's summary what this call did with the job.

Runs are identified by :func:`cnnlab.runs.record.fingerprint`, stored as ``config_hash``; a
search reads a config's earlier runs from the index by that hash (:mod:`cnnlab.runs.index`).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.config.job import _hydra_job
from cnnlab.config.schema import validate
from cnnlab.errors import CnnlabError
from cnnlab.paths import (
    CHECKPOINTS,
    DECISION_FILE,
    LAST,
    METRICS,
    RESULTS_FILE,
    write_json,
    write_text,
)
from cnnlab.runs import index
from cnnlab.runs.checkpoints import _checkpoint_step, _peek, read_checkpoint
from cnnlab.runs.lock import LOCK_FILE, RunLock, is_locked
from cnnlab.runs.record import (
    UNFINISHED,
    RunRecord,
    Status,
    fingerprint,
    identity_differences,
    is_identity,
)

log = logging.getLogger(__name__)

# How long the other ranks wait for rank 0's decision (rank 0 may first have to scan many runs).
FOLLOW_TIMEOUT_S = 600.0
# How long a search for earlier runs waits for another process's search of the same config.
CONFIG_LOCK_WAIT_S = 120.0
# The id of the sweep call a job belongs to, set by the sweep's summary callback in the launching
# process and inherited by the jobs' processes: a summary reads only its own call's decisions,
# never those of another process working on the same sweep dir.
SWEEP_CALL_ENV = "CNNLAB_SWEEP_CALL"
# What a call does with its job (Plan.action).
TRAIN, CONTINUE, RETRY, SKIP, BUSY, REFUSED = (
    "train",
    "continue",
    "retry",
    "skip",
    "busy",
    "refused",
)


def is_running(run_dir: Path, record: RunRecord) -> bool:
    """Whether another process is training this run now: it holds the run's lock, or (for a run
    of a cnnlab without locks) its owner process still lives."""
    return record.status == Status.RUNNING and (is_locked(run_dir) or record.is_live())


def resumable(runs: list[tuple[Path, RunRecord]]) -> tuple[Path, RunRecord] | None:
    """The latest run that stopped before it finished (its owner gone)."""
    for run_dir, record in reversed(runs):
        if record.unfinished and not is_running(run_dir, record):
            return run_dir, record
    return None


@dataclass
class Plan:
    """What ``train`` does (``action``): train in ``run_dir`` from ``checkpoint`` (None: from
    scratch), skip because ``same_as`` completed this config (``same_as == run_dir``: the job's
    own dir holds it), or leave a run that another process trains to it (busy). ``pointer_dir``
    is this job's own Hydra dir when the work happens elsewhere (a continued multirun job)."""

    config: DictConfig
    run_dir: Path
    results: RunRecord
    checkpoint: str | None = None
    same_as: Path | None = None
    pointer_dir: Path | None = None
    earlier: RunRecord = field(default_factory=RunRecord)
    multirun: bool = False
    # A process of rank > 0: it trains as rank 0 decided and writes nothing.
    follower: bool = False
    action: str = TRAIN
    locks: list[RunLock] = field(default_factory=list)

    @property
    def in_place(self) -> bool:
        return self.same_as == self.run_dir

    def describe(self) -> str:
        """What this call does with its job, in words (the dry run prints it)."""
        step = "step 0" if self.checkpoint is None else f"step {_checkpoint_step(self.checkpoint)}"
        if self.action == SKIP:
            return (
                f"skip: completed in {self.same_as}"
                if self.in_place
                else (f"skip: same as {self.same_as}")
            )
        if self.action == BUSY:
            return f"busy: {self.run_dir} is being trained by {RunLock(self.run_dir).owner()}"
        if self.action == CONTINUE:
            return f"continue {self.run_dir} from {step}"
        if self.action == RETRY:
            return f"retry {self.run_dir} (it failed: {self.earlier.error}) from {step}"
        start = f" from {self.checkpoint}" if self.checkpoint else ""
        return f"train in {self.run_dir}{start}"

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def resume_checkpoint(run_dir: Path, fallback: bool) -> str | None:
    """The checkpoint to continue ``run_dir`` from: its ``last.ckpt`` if that is whole; else,
    with ``fallback``, its newest whole checkpoint (the most training steps), with a warning
    naming the broken file. None if the run never wrote one (it starts again from step 0)."""
    folder = run_dir / CHECKPOINTS
    last = run_dir / LAST
    others = (
        sorted(p for p in folder.glob("*.ckpt") if p.name != last.name) if folder.is_dir() else []
    )
    if not last.is_file() and not others:
        return None
    steps: dict[Path, int] = {}
    for path in [last, *others]:
        try:
            steps[path] = _checkpoint_step(path)
        except Exception:  # truncated or garbled: torch fails in many ways
            continue
    if last in steps:
        return str(last)
    newest = max(steps, key=steps.__getitem__, default=None)
    broken = last if last.is_file() else None
    what = (
        f"{broken} is not a whole checkpoint (truncated or corrupted)"
        if broken
        else (f"{run_dir} has no {LAST}")
    )
    if newest is None or not fallback:
        instead = (
            "and no other checkpoint of the run is whole"
            if newest is None
            else f"resume_fallback=true continues from the newest whole one, {newest}"
        )
        raise CnnlabError(
            f"Cannot continue {run_dir}: {what}, {instead}. Delete the broken file to start the "
            "run again from step 0, or start a new run."
        )
    log.warning("%s; continuing from the newest whole checkpoint, %s (step %d)", what, newest,
                steps[newest])  # fmt: skip
    return str(newest)


def _continue(
    cfg: DictConfig,
    run_dir: Path,
    earlier: RunRecord,
    fresh: Path | None,
    action: str = CONTINUE,
) -> Plan:
    """Train on in ``run_dir`` from its newest whole checkpoint (from step 0 if it has none)."""
    checkpoint = resume_checkpoint(run_dir, cfg.get("resume_fallback", True))
    cfg = copy.deepcopy(cfg)  # the caller's config stays as it was
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.resume = None
    entry = {"status": earlier.get("status")}
    if earlier.error:
        entry["error"] = earlier.error
    results = RunRecord(
        {k: v for k, v in earlier.items() if k != "error"}, status=Status.RUNNING.value
    )
    results["resumed"] = [*earlier.resumed, entry]
    return Plan(
        cfg, run_dir, results, checkpoint, earlier=earlier, pointer_dir=fresh, action=action
    )


def _stored_config(checkpoint: str) -> DictConfig:
    return OmegaConf.create(read_checkpoint(Path(checkpoint))["cnnlab"]["config"])


def _override_key(override: str) -> str:
    """The config key an override sets: ``+a.b=1`` -> ``a.b``, ``model=lenet5`` -> ``model``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _take_overrides(stored: DictConfig, cfg: DictConfig, overrides: list[str], run_dir) -> None:
    """Apply to ``stored`` the overrides of keys outside the run's identity; refuse, naming them,
    the overrides that would change what the run trains."""
    changed = []
    for override in overrides:
        key = _override_key(override)
        if key in ("resume", "resume_fallback") or key.startswith("hydra"):
            continue
        new = OmegaConf.select(cfg, key)
        new = OmegaConf.to_container(new, resolve=True) if OmegaConf.is_config(new) else new
        if not is_identity(key):
            OmegaConf.update(stored, key, new, force_add=True)
            continue
        old = OmegaConf.select(stored, key)
        old = OmegaConf.to_container(old, resolve=True) if OmegaConf.is_config(old) else old
        if old != new:
            changed.append(f"{key} ({_short(old)} -> {_short(new)})")
    if changed:
        raise CnnlabError(
            f"resume={run_dir} continues that run with the config it was started with, and these "
            f"overrides would change what it trains: {', '.join(changed)}. Only keys outside a "
            "run's identity (name, paths, logger, skip_completed) may change on resume. To train "
            f"with another config from its checkpoint, start a new run: ckpt_path="
            f"{run_dir / LAST} {' '.join(o for o in overrides if not o.startswith('resume='))}."
        )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _resume_dir(cfg: DictConfig, run_dir: Path, fresh: Path, overrides: list[str]) -> Plan:
    earlier = RunRecord.read(run_dir)
    if earlier is None:
        started = (run_dir / ".hydra").is_dir()
        raise CnnlabError(
            f"resume={run_dir}: that run was killed during start-up, before it wrote its "
            f"{RESULTS_FILE}, so there is nothing to continue: run its command again "
            "(resume=auto and a multirun re-run count such a dir as never started)."
            if started
            else f"resume={run_dir}: not a run dir (it has no {RESULTS_FILE}). Give a "
            "directory outputs/<date>/<time>_<name> written by cnnlab-train, resume=auto, or "
            "start a new run from a checkpoint file with ckpt_path=<file>."
        )
    running = is_running(run_dir, earlier)
    if not (earlier.unfinished or earlier.status == Status.FAILED) or running:
        state = "is still running" if running else f"has status {earlier.get('status')}"
        raise CnnlabError(
            f"resume={run_dir}: that run {state}; only a run that stopped before it finished "
            f"(status {', '.join(map(str, UNFINISHED))} or failed) is continued. To train more "
            f"from its checkpoint, start a new run: ckpt_path={run_dir / LAST}."
        )
    checkpoint = resume_checkpoint(run_dir, cfg.get("resume_fallback", True))
    if checkpoint is None:
        raise CnnlabError(
            f"resume={run_dir}: the run stopped before it wrote a checkpoint, so there is nothing "
            "to continue from; start it again (resume=auto starts it again in its own dir)."
        )
    stored = _stored_config(checkpoint)
    _take_overrides(stored, cfg, [o for o in overrides if not o.startswith("resume=")], run_dir)
    with open_dict(stored):
        stored.resume_fallback = cfg.get("resume_fallback", True)
    action = RETRY if earlier.status == Status.FAILED else CONTINUE
    return _continue(stored, run_dir, earlier, fresh, action)


def _in_place(cfg: DictConfig, run_dir: Path, record: RunRecord, config_hash: str) -> Plan:
    """The plan of a job whose own dir already holds its run (a re-run in a fixed dir)."""
    if record.config_hash != config_hash:
        try:
            checkpoint = resume_checkpoint(run_dir, fallback=True)
        except CnnlabError:
            checkpoint = None
        keys = identity_differences(_stored_config(checkpoint), cfg) if checkpoint else []
        which = (
            f"it differs in {', '.join(keys)}"
            if keys
            else (f"config_hash {record.config_hash}, this job's is {config_hash}")
        )
        raise CnnlabError(
            f"{run_dir} holds a run of another config ({which}), and cnnlab never writes over a "
            "run. A fixed hydra.sweep.dir (or hydra.run.dir) re-runs the very same jobs; give "
            "another dir to run other ones."
        )
    if record.status == Status.COMPLETED:
        return Plan(cfg, run_dir, record, same_as=run_dir, earlier=record, action=SKIP)
    if record.unfinished:
        return _continue(cfg, run_dir, record, None)
    if record.status == Status.FAILED:
        return _continue(cfg, run_dir, record, None, action=RETRY)
    raise CnnlabError(
        f"{run_dir} holds a run with status {record.get('status')!r}, which cnnlab does not "
        "write; give another dir."
    )


def plan(
    cfg: DictConfig,
    fresh: Path,
    multirun: bool,
    overrides: list[str],
    existing: RunRecord | None = None,
    runs_index: index.RunIndex | None = None,
) -> Plan:
    """Decide what this call does. ``fresh`` is the run dir Hydra has made for it, ``existing``
    the run that dir already holds (a re-run in a fixed dir). Reads, never writes, but for the
    index of earlier runs when a search rebuilds it (``runs_index``: by default a writable one of
    ``paths.output_root``)."""
    config_hash = fingerprint(cfg)
    new = RunRecord(
        name=cfg.name, status=Status.RUNNING.value, run_dir=str(fresh), config_hash=config_hash
    )
    new_plan = Plan(cfg, fresh, new, checkpoint=cfg.ckpt_path)
    resume = cfg.resume
    planned = resume == "auto" or (multirun and cfg.skip_completed)
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
    if existing is not None:
        if not planned:
            raise CnnlabError(
                f"{fresh} already holds a run (it has a {RESULTS_FILE}), and cnnlab never "
                "writes over a run. Leave hydra.run.dir at its default (a new directory per run) "
                f"or name an empty one; to continue that run, use resume={fresh} or resume=auto."
            )
        return _in_place(cfg, fresh, existing, config_hash)
    if not planned:
        return new_plan
    runs_index = runs_index or index.RunIndex(Path(cfg.paths.output_root))
    runs = runs_index.runs(config_hash)
    completed = [run for run in runs if run[1].status == Status.COMPLETED]
    if multirun and cfg.skip_completed and completed:
        return Plan(
            cfg, fresh, new, same_as=completed[-1][0], earlier=completed[-1][1], action=SKIP
        )
    running = [run for run in runs if is_running(*run)]
    if running:
        return Plan(cfg, running[-1][0], running[-1][1], pointer_dir=fresh, action=BUSY)
    found = resumable(runs)
    if found is None:
        return new_plan
    return _continue(cfg, found[0], found[1], fresh)


def launch_rank() -> int:
    """This process's rank when a launcher started one process per device before cnnlab runs
    (SLURM tasks, torchrun, Lightning re-running the command for ``strategy=ddp``); else 0."""
    ranks = [os.environ.get(v, "") for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")]
    return max((int(r) for r in ranks if r.isdigit()), default=0)


def launch_id() -> str:
    """What tells this launch of a job from an earlier one of the same job dir (a requeued SLURM
    job, a restarted torchrun), the same in every rank: rank 0's decision names it, so that the
    other ranks never follow the decision of an earlier launch."""
    names = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID")
    return ",".join(os.environ.get(name, "") for name in (*names, "TORCHELASTIC_RESTART_COUNT"))


def read_decision(job_dir: Path) -> dict[str, Any]:
    """Rank 0's decision of the latest call in ``job_dir``; empty if it has none."""
    try:
        return json.loads((job_dir / DECISION_FILE).read_text())
    except (OSError, ValueError):
        return {}


def follow_rank_zero(cfg: DictConfig, fresh: Path) -> Plan:
    """The plan of a process of rank > 0: rank 0's, read from its Hydra dir (the same dir, as
    every rank runs the same command line)."""
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while (decided := read_decision(fresh)).get("launch") != launch_id():
        if time.monotonic() > deadline:
            raise CnnlabError(
                f"Rank {launch_rank()} waited {FOLLOW_TIMEOUT_S:.0f} s for rank 0 to decide what "
                f"to train in {fresh} ({DECISION_FILE}). Every rank must run the same command "
                "line with the same run dir: set hydra.run.dir (or use a multirun launcher, whose "
                "job dirs are fixed at submission)."
            )
        time.sleep(0.2)
    if decided["action"] == REFUSED:
        raise CnnlabError(decided["error"])
    run_dir = Path(decided["run_dir"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.resume = None
    same_as = Path(decided["same_as"]) if decided["same_as"] else None
    checkpoint = decided["checkpoint"]
    return Plan(
        cfg, run_dir, RunRecord(), checkpoint, same_as, follower=True, action=decided["action"]
    )


def _config_lock(cfg: DictConfig) -> RunLock:
    """The lock of this config's search for earlier runs under ``paths.output_root``: held until
    the run it decides on has its record and lock, so that two processes starting the same
    config at once see each other."""
    lock = RunLock(Path(cfg.paths.output_root) / index.INDEX_DIR / fingerprint(cfg))
    deadline = time.monotonic() + CONFIG_LOCK_WAIT_S
    while not lock.acquire():
        if time.monotonic() > deadline:
            raise CnnlabError(
                f"Waited {CONFIG_LOCK_WAIT_S:.0f} s for {lock.owner()} to finish planning the "
                f"same config ({lock.path}); it may hang. Stop it, or run with "
                "skip_completed=false to train without looking for earlier runs."
            )
    return lock


def start(cfg: DictConfig) -> Plan:
    """The plan of this call, with results.json (status running) written where it will train and
    the lock of that dir held. A config error is recorded as a failed run in the dir Hydra made
    (unless it holds a run already), and raised."""
    fresh = Path(cfg.paths.output_dir)
    if launch_rank() > 0:
        return follow_rank_zero(cfg, fresh)
    fresh.mkdir(parents=True, exist_ok=True)
    multirun, overrides = _hydra_job()
    own = RunLock(fresh)
    if not own.acquire():
        record = RunRecord.read(fresh) or RunRecord()
        return Plan(cfg, fresh, record, multirun=multirun, action=BUSY)
    existing = RunRecord.read(fresh)
    if existing is not None and existing.is_pointer:
        existing = None  # an earlier call's pointer: this call plans the job afresh
    searching = existing is None and (cfg.resume == "auto" or (multirun and cfg.skip_completed))
    config_lock, job = None, None
    try:
        validate(cfg)
        config_lock = _config_lock(cfg) if searching else None
        job = plan(cfg, fresh, multirun, overrides, existing)
        job.locks.append(own)
        if job.run_dir != fresh and job.action != BUSY:
            other = RunLock(job.run_dir)
            if other.acquire():
                job.locks.append(other)
            else:  # another process took it between the search and now
                job = Plan(cfg, job.run_dir, job.results, pointer_dir=fresh, action=BUSY)
                job.locks.append(own)
        job.multirun = multirun
        _record_start(job, fresh)
    except BaseException as e:
        own.release()
        if job is not None:
            job.release()
        if isinstance(e, CnnlabError):
            if existing is None:
                failed = RunRecord(name=cfg.name, status="failed", run_dir=str(fresh))
                failed["error"] = str(e)
                failed.write(fresh)
            decision = {"action": REFUSED, "error": str(e), "launch": launch_id()}
            decision["call"] = os.environ.get(SWEEP_CALL_ENV)
            write_json(fresh / DECISION_FILE, decision)
        raise
    finally:
        if config_lock is not None:
            config_lock.release()
    if job.action not in (TRAIN, SKIP):
        print(f"cnnlab: {job.describe()}", flush=True)
    return job


def preview(cfg: DictConfig, runs_index: index.RunIndex) -> tuple[str, str]:
    """What :func:`start` would decide for ``cfg``'s job (its action and, in words, what it
    does), decided as start decides it but writing nothing and taking no lock; ``runs_index`` is
    a read-only one, shared by the jobs of a dry run."""
    fresh = Path(cfg.paths.output_dir)
    multirun, overrides = _hydra_job()
    if is_locked(fresh):
        return BUSY, f"busy: {fresh} is being trained by {RunLock(fresh).owner()}"
    existing = RunRecord.read(fresh)
    if existing is not None and existing.is_pointer:
        existing = None
    try:
        validate(cfg)
        job = plan(cfg, fresh, multirun, overrides, existing, runs_index)
    except CnnlabError as e:
        return REFUSED, f"refused: {e}"
    return job.action, job.describe()


def dry_run(jobs: Iterable[DictConfig]) -> int:
    """Print what each job would do (``cnnlab-train --dry-run``) and the count per action;
    return the exit status: 1 if a job would be refused (the sweep would fail), else 0."""
    print("cnnlab: dry run: nothing is trained or written", flush=True)
    indexes: dict[Path, index.RunIndex] = {}
    counts: dict[str, int] = {}
    for num, cfg in enumerate(jobs):
        root = Path(cfg.paths.output_root)
        runs_index = indexes.setdefault(root, index.RunIndex(root, writable=False))
        action, text = preview(cfg, runs_index)
        counts[action] = counts.get(action, 0) + 1
        _, overrides = _hydra_job()
        print(f"job {num:>3} {','.join(overrides)}\n        {text}", flush=True)
    print("dry run: " + ", ".join(f"{n} {action}" for action, n in counts.items()))
    return 1 if REFUSED in counts else 0


def _record_start(job: Plan, fresh: Path) -> None:
    """Rank 0's decision for the other ranks and the sweep's summary; for a run that trains, its
    record with status running and its earlier metrics set aside."""
    if job.action == BUSY:
        return  # the dir is another process's: its decision stands
    same_as = None if job.same_as is None else str(job.same_as)
    decision = {"run_dir": str(job.run_dir), "checkpoint": job.checkpoint, "same_as": same_as}
    decision.update(action=job.action, launch=launch_id(), call=os.environ.get(SWEEP_CALL_ENV))
    write_json(fresh / DECISION_FILE, decision)
    if job.action == SKIP:
        return
    job.results.mark_started()
    job.results.write(job.run_dir)
    index.register(Path(job.config.paths.output_root), job.run_dir, job.results.config_hash)
    if job.earlier:
        step = 0 if job.checkpoint is None else _checkpoint_step(Path(job.checkpoint))
        set_aside_metrics(job.run_dir, step)


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
    elif all(
        p.name in (".hydra", DECISION_FILE, LOCK_FILE) or p.suffix == ".log"
        for p in fresh.iterdir()
    ):
        shutil.rmtree(fresh)


def epochs_done(trainer, run_dir: Path) -> int:
    """Completed epochs. Spawned DDP workers do not pass theirs back to this process's trainer:
    then they come from last.ckpt, which the workers write at every epoch end."""
    if trainer.current_epoch or trainer.world_size == 1 or not (run_dir / LAST).is_file():
        return trainer.current_epoch
    # Saved at the epoch end, after Lightning counted the epoch processed, before completed.
    return _peek(run_dir / LAST)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


def epoch_figures(trainer, kept: dict[str, list], run_dir: Path) -> dict[str, list]:
    """The finished epochs' figures for the convergence rule, ``kept`` as the LightningModule
    kept them (name: one entry per epoch); spawned DDP workers keep theirs: then from last.ckpt,
    as :func:`epochs_done`."""
    if any(kept.values()) or trainer.world_size == 1 or not (run_dir / LAST).is_file():
        return kept
    saved = _peek(run_dir / LAST).get("cnnlab") or {}
    return {name: list(saved.get(name, [])) for name in kept}


def skip(plan: Plan) -> dict[str, Any]:
    """Write the skip marker of a job whose config has already completed (none when the job's
    own dir holds that run); train nothing."""
    plan.release()
    if plan.follower:
        return {"status": "skipped", "same_as": str(plan.same_as)}
    # The earlier scores too: a sweeper (Optuna) reads the job's value from them.
    scores = {k: plan.earlier[k] for k in ("best_val_acc", "test_acc") if k in plan.earlier}
    results = {**plan.results, **scores, "status": "skipped", "same_as": str(plan.same_as)}
    if plan.in_place:
        print(f"cnnlab: skipped, {plan.same_as} holds this job's completed run", flush=True)
        return results
    write_json(plan.run_dir / RESULTS_FILE, results)
    print(f"cnnlab: skipped, this config has already completed in {plan.same_as}", flush=True)
    return results


def busy(plan: Plan) -> dict[str, Any]:
    """Leave a run that another process trains now to it: in a multirun, this job's own dir
    points to it (status running). A single run under ``resume=auto`` (a job script started
    twice, or requeued while its first instance still trains) ends at once, without waiting
    for the owner, which may train for hours; the call succeeds, as its run is in hand. Any
    other single run stops with the reason: it asked for a run of its own in that dir."""
    plan.release()
    message = f"{plan.run_dir} is being trained by {RunLock(plan.run_dir).owner()} now"
    fresh = plan.pointer_dir
    if not plan.multirun:
        if fresh is not None:
            finish(plan, {})
        if plan.config.resume != "auto":
            raise CnnlabError(f"{message}; this call leaves that run to it and trains nothing.")
        print(
            f"cnnlab: {message}; this call leaves that run to it, trains nothing and exits 0. "
            "If that process stops before the run completes, resume=auto continues it.",
            flush=True,
        )
        return {"status": Status.RUNNING.value, "run_dir": str(plan.run_dir)}
    pointer = {"status": Status.RUNNING.value, "run_dir": str(plan.run_dir)}
    if fresh is not None:
        pointer.update(run_dir=str(fresh), continued_in=str(plan.run_dir))
        write_json(fresh / RESULTS_FILE, pointer)
    print(f"cnnlab: {message}; left to it", flush=True)
    return pointer


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
