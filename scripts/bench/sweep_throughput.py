"""Sweep throughput: the same short jobs run one after another and by the joblib launcher.

Each repeat runs, in fresh folders and in alternating order, ``cnnlab-train -m seed=0..N-1``
with the basic launcher and with ``hydra/launcher=joblib`` (``--n-jobs`` at once, each job with
its share of the cores). Prints the median wall time of each sweep and their ratio, and each
job's overhead: the part of the sweep's wall time per job spent outside cnnlab's training
function (process start, Hydra composing and launching, the sweep summary), as a fraction of it.

    uv run python scripts/bench/sweep_throughput.py [--jobs 8] [--n-jobs 2] [--repeats 3]
                                                    [--samples-per-class 100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

JOB = [
    "model=lenet5_modern",
    "data.val_size=500",
    "trainer.max_epochs=2",
    "trainer.limit_test_batches=2",
    "skip_completed=false",
]


def sweep(exe: str, jobs: int, overrides: list[str]) -> tuple[float, list[float]]:
    """(wall time of the whole sweep, wall_time_s of each job from its results.json)."""
    with tempfile.TemporaryDirectory() as cwd:
        seeds = ",".join(str(s) for s in range(jobs))
        start = time.perf_counter()
        subprocess.run(
            [exe, "-m", *overrides, f"seed={seeds}"], cwd=cwd, check=True, capture_output=True
        )
        wall = time.perf_counter() - start
        results = [json.loads(p.read_text()) for p in Path(cwd).rglob("results.json")]
    return wall, [r["wall_time_s"] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib's jobs at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--samples-per-class", type=int, default=100, help="training images: the job's length"
    )
    args = parser.parse_args()
    exe = shutil.which("cnnlab-train")
    if exe is None:
        raise SystemExit("cnnlab-train is not on PATH: run this with `uv run`.")
    job = [*JOB, f"data.samples_per_class={args.samples_per_class}"]
    launchers = {
        "sequential": [],
        "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"],
    }
    walls: dict[str, list[float]] = {name: [] for name in launchers}
    overheads: dict[str, list[float]] = {name: [] for name in launchers}
    for repeat in range(args.repeats):
        order = list(launchers) if repeat % 2 == 0 else list(reversed(launchers))
        for name in order:
            wall, job_times = sweep(exe, args.jobs, [*job, *launchers[name]])
            walls[name].append(wall)
            # Jobs run n at a time under joblib: each has n times the sweep's time per job.
            at_once = args.n_jobs if name == "joblib" else 1
            per_job = wall * at_once / args.jobs
            overheads[name].append((per_job - statistics.fmean(job_times)) / per_job)
            print(f"repeat {repeat}: {name} {wall:.1f} s", flush=True)
    for name in launchers:
        print(
            f"{name}: median {statistics.median(walls[name]):.1f} s for {args.jobs} jobs "
            f"(min {min(walls[name]):.1f}, max {max(walls[name]):.1f}); time outside the "
            f"training function {statistics.median(overheads[name]):.1%} of each job's"
        )
    ratio = statistics.median(walls["sequential"]) / statistics.median(walls["joblib"])
    print(f"joblib ({args.n_jobs} at once) is {ratio:.2f}x the throughput of sequential")


if __name__ == "__main__":
    main()
