"""Multirun support: what a job of a sweep knows about itself, machine sharing between parallel
jobs, failure isolation, and the summary printed when the sweep ends.

A failed job of a sweep is recorded (``status: failed`` and its error in results.json, the
traceback in the job's log file) and the sweep goes on; :class:`SweepSummary`, a Hydra callback,
lists every job's status at the end and exits non-zero if any did not complete. A job skipped in
its own dir (a re-run in a fixed sweep dir) keeps its results.json as it was; rank 0's decision
in the dir tells the summary that this call skipped it.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.config.job import in_multirun
from cnnlab.errors import CnnlabError
from cnnlab.paths import write_json
from cnnlab.runs.planning import REFUSED, SKIP, SWEEP_CALL_ENV, read_decision
from cnnlab.runs.record import RunRecord, Status

log = logging.getLogger(__name__)

# The statuses of jobs that did not complete: the sweep exits non-zero if it has any.
NOT_DONE = (Status.FAILED, Status.INTERRUPTED, Status.RUNNING, Status.MISSING)


def _parallel_jobs() -> int:
    """How many jobs of this sweep share this machine at once (the joblib launcher's n_jobs)."""
    if not in_multirun():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if n_jobs is None:
        return 1  # the basic launcher runs jobs one after another; submitit gives each its node
    cpus = os.cpu_count() or 1
    return cpus if n_jobs < 0 else min(n_jobs, cpus)


def share_machine(cfg: DictConfig) -> dict[str, Any]:
    """Give this job its share of a machine that parallel jobs run on: the CPU cores divided
    between them for torch's threads, and one GPU of its own (round robin over job numbers)
    when it trains on one GPU. Returns what was chosen, for results.json."""
    jobs = _parallel_jobs()
    if jobs == 1:
        return {}
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    chosen: dict[str, Any] = {"parallel_jobs": jobs, "torch_threads": torch.get_num_threads()}
    gpus = torch.cuda.device_count()
    uses_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and gpus > 0
    if uses_gpu and cfg.trainer.devices in (1, "1"):
        gpu = HydraConfig.get().job.num % gpus
        with open_dict(cfg):
            cfg.trainer.devices = [gpu]
        chosen["gpu"] = gpu
    return chosen


def job_failed(error: Exception) -> None:
    """Log a failed job's error (with its traceback unless it is a user error) to the job's log
    file and free what it held, so that the next job of the sweep starts clean. run.train has
    already written ``status: failed`` and the error to the job's results.json."""
    if isinstance(error, CnnlabError):
        log.error("job failed: %s", error)
    else:
        log.error("job failed", exc_info=error)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep: those that Hydra wrote a .hydra/ folder into."""
    return sorted(
        (p.parent for p in sweep_dir.rglob(".hydra") if p.parent != sweep_dir),
        key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else p.name),
    )


def read_job(job_dir: Path, call: str | None = None) -> dict[str, Any]:
    """A job's results.json: ``status: missing`` if the job never got to write one; in the sweep
    call ``call``, ``skipped`` if the call found it completed in its own dir and ``failed`` if
    the call refused it (its dir holds another config's run, which stays as it was)."""
    record = RunRecord.read(job_dir) or RunRecord(status=Status.MISSING.value, run_dir=str(job_dir))
    decision = read_decision(job_dir)
    if call is None or decision.get("call") != call:
        return record
    if decision.get("action") == REFUSED:
        return {**record, "status": Status.FAILED.value, "error": decision["error"]}
    same_as = decision.get("same_as")
    here = same_as is not None and Path(same_as).resolve() == job_dir.resolve()
    if decision.get("action") == SKIP and here and record.status == Status.COMPLETED:
        return {
            **record,
            "status": Status.SKIPPED.value,
            "same_as": f"{same_as} (completed before)",
        }
    return record


def _overrides(job_dir: Path) -> str:
    path = job_dir / ".hydra" / "overrides.yaml"
    return ",".join(OmegaConf.load(path)) if path.is_file() else ""


def summarize_sweep(sweep_dir: Path, call: str | None = None) -> dict[str, Any]:
    """Every job's status, overrides and scores (as sweep call ``call`` left them), and the count
    of jobs per status."""
    jobs = []
    for job_dir in job_dirs(sweep_dir):
        results = read_job(job_dir, call)
        jobs.append(
            {
                "job": job_dir.name,
                "overrides": _overrides(job_dir),
                "status": results["status"],
                "best_val_acc": results.get("best_val_acc"),
                "test_acc": results.get("test_acc"),
                "detail": results.get("error") or results.get("same_as") or "",
            }
        )
    counts = {s.value: sum(j["status"] == s for j in jobs) for s in Status}
    best = sweep_dir / "optimization_results.yaml"
    summary = {"sweep_dir": str(sweep_dir), "counts": counts, "jobs": jobs}
    if best.is_file():
        summary["optuna"] = OmegaConf.to_container(OmegaConf.load(best))
    return summary


def print_sweep(summary: dict[str, Any]) -> None:
    """One line per job (plain text: long overrides and errors are never cut), then the counts."""
    for job in summary["jobs"]:
        scores = " ".join(
            f"{k}={job[k]:.4f}" for k in ("best_val_acc", "test_acc") if job[k] is not None
        )
        print(f"job {job['job']:>3} {job['status']:<11} {scores:<36} {job['overrides']}")
        if job["detail"]:
            label = "same as" if job["status"] == "skipped" else "error"
            print(f"        {label}: {job['detail']}")
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n)
    print(f"sweep: {counts}")
    best = summary.get("optuna", {})
    if "best_value" in best:  # a single-objective search; multi-objective ones list a front
        print(f"best: {best['best_value']:.4f} with {best['best_params']}")
    # On a line of its own, so that it is never cut and can be copied.
    print(f"sweep_dir: {summary['sweep_dir']}")


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, print every job's status, write summary.json
    into the sweep dir, and exit with status 1 if any job failed or never finished."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep dir lies under paths.output_root, which follows ${hydra:runtime.cwd}: the
        # sweeper resolves it before Hydra has set its config, as it does for each job.
        HydraConfig.instance().set_config(config)
        os.environ[SWEEP_CALL_ENV] = uuid.uuid4().hex

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarize_sweep(sweep_dir, os.environ.get(SWEEP_CALL_ENV))
        write_json(sweep_dir / "summary.json", summary)
        print_sweep(summary)
        bad = sum(summary["counts"][s] for s in NOT_DONE)
        if bad:
            print(
                f"cnnlab: error: {bad} of {len(summary['jobs'])} jobs of the sweep did not "
                f"complete; their errors are in their results.json and log files.",
                file=sys.stderr,
            )
            sys.exit(1)
