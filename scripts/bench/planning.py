"""Planning and comparing a 1,000-job sweep: the skip/continue planning of every job of its re-run
in a new sweep dir (each job searches output_root for earlier runs of its config), from the run
index and from a plain scan of every results.json, and ``cnnlab-compare`` over the 1,000 runs.

The runs are hand-written (planning only, nothing trains): one config composed once, 1,000 seeds
of it in one sweep dir, each with results.json, .hydra/config.yaml and hydra.yaml; 70% completed,
20% interrupted with a tiny checkpoint, 10% failed. The variants run interleaved, ``--repeats``
times; the scan plans only ``--scan-jobs`` jobs per repeat (it reads every run for every job, so
all 1,000 would take minutes), and its 1,000-job figure is that per-job median times 1,000.

    uv run python scripts/bench/planning.py [--jobs 1000] [--scan-jobs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from cnnlab.config.compose import job_configs
from cnnlab.runs import planning
from cnnlab.runs.index import COMPLETE, INDEX_DIR, RunIndex
from cnnlab.runs.record import fingerprint


def write_runs(root: Path, jobs: int):
    """The configs of ``jobs`` seeds, each with its run under root/multirun/old/<seed>."""
    overrides = ["model=lenet5", f"paths.root_dir={root.parent}", f"hydra.run.dir={root}/x"]
    [base] = job_configs(overrides, multirun=False)
    choices = OmegaConf.to_yaml({"hydra": {"runtime": {"choices": {"model": "lenet5"}}}})
    configs = []
    for seed in range(jobs):
        cfg = copy.deepcopy(base)
        with open_dict(cfg):
            cfg.seed = seed
            cfg.paths.output_dir = str(root / "multirun" / "new" / str(seed))
        configs.append(cfg)
        run_dir = root / "multirun" / "old" / str(seed)
        (run_dir / ".hydra").mkdir(parents=True)
        plain = OmegaConf.to_container(cfg, enum_to_str=True)
        (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(plain))
        (run_dir / ".hydra" / "hydra.yaml").write_text(choices)
        status = "completed" if seed % 10 < 7 else "interrupted" if seed % 10 < 9 else "failed"
        record = {"status": status, "run_dir": str(run_dir), "config_hash": fingerprint(cfg)}
        if status == "completed":
            record.update(test_acc=0.8 + seed % 7 / 100, best_val_acc=0.8)
        if status == "failed":
            record["error"] = "OSError: disk full"
        (run_dir / "results.json").write_text(json.dumps(record))
        if status != "completed":
            checkpoint = {"global_step": 30, "state_dict": {}, "cnnlab": {"config": plain}}
            (run_dir / "checkpoints").mkdir()
            torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    return configs


def plan_jobs(configs, indexed: bool) -> tuple[float, dict[str, int]]:
    """Seconds to plan the jobs (each with a fresh index object, as each job's process has);
    not ``indexed``: the index is left unused and unwritten, each search scans the tree."""
    actions: dict[str, int] = {}
    start = time.perf_counter()
    for cfg in configs:
        root = Path(cfg.paths.output_root)
        runs_index = RunIndex(root, writable=indexed)
        job = planning.plan(cfg, Path(cfg.paths.output_dir), True, [], None, runs_index)
        actions[job.action] = actions.get(job.action, 0) + 1
    return time.perf_counter() - start, actions


def search_jobs(root: Path, hashes: list[str], indexed: bool) -> float:
    """Seconds for the search for earlier runs alone, of each config hash."""
    start = time.perf_counter()
    for config_hash in hashes:
        RunIndex(root, writable=indexed).runs(config_hash)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--scan-jobs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        start = time.perf_counter()
        configs = write_runs(root, args.jobs)
        HydraConfig.instance().cfg = None  # planned as multirun jobs, outside a Hydra job
        print(f"wrote {args.jobs} runs in {time.perf_counter() - start:.1f} s")
        RunIndex(root).scan()  # the first search of a tree without an index builds it
        marker, hidden = root / INDEX_DIR / COMPLETE, root / INDEX_DIR / "hidden"
        compare = [sys.executable, "-m", "cnnlab.cli.compare", str(root / "multirun" / "old")]
        hashes = [fingerprint(cfg) for cfg in configs]
        indexed, scanned, compared, index_search, scan_search = [], [], [], [], []
        for repeat in range(args.repeats):
            seconds, actions = plan_jobs(configs, True)
            indexed.append(seconds / len(configs))
            index_search.append(search_jobs(root, hashes, True) / len(hashes))
            marker.rename(hidden)  # without the marker, every search scans the tree
            seconds, _ = plan_jobs(configs[: args.scan_jobs], False)
            scanned.append(seconds / args.scan_jobs)
            scan_search.append(search_jobs(root, hashes[: args.scan_jobs], False) / args.scan_jobs)
            hidden.rename(marker)
            out = Path(tmp) / f"comparison{repeat}"
            start = time.perf_counter()
            subprocess.run([*compare, "--out", str(out)], check=True, capture_output=True)
            compared.append(time.perf_counter() - start)
            print(f"repeat {repeat}: index {indexed[-1] * 1e3:.2f} ms/job, scan "
                  f"{scanned[-1] * 1e3:.1f} ms/job, compare {compared[-1]:.1f} s")  # fmt: skip
    index_ms, scan_ms = statistics.median(indexed) * 1e3, statistics.median(scanned) * 1e3
    print(f"planned: {actions}")
    print(f"planning, index: {index_ms:.2f} ms/job, {index_ms * args.jobs / 1e3:.2f} s for "
          f"{args.jobs} jobs (median of {args.repeats})")  # fmt: skip
    print(f"planning, scan:  {scan_ms:.1f} ms/job, {scan_ms * args.jobs / 1e3:.1f} s for "
          f"{args.jobs} jobs (from {args.scan_jobs} jobs a repeat)")  # fmt: skip
    print(f"scan / index: {scan_ms / index_ms:.0f}x")
    index_s, scan_s = statistics.median(index_search) * 1e3, statistics.median(scan_search) * 1e3
    print(f"the search alone: index {index_s:.2f} ms/job, scan {scan_s:.1f} ms/job, "
          f"{scan_s / index_s:.0f}x")  # fmt: skip
    print(f"cnnlab-compare over {args.jobs} runs: {statistics.median(compared):.2f} s (median, "
          f"{min(compared):.2f} - {max(compared):.2f} s, a process start included)")  # fmt: skip


if __name__ == "__main__":
    main()
