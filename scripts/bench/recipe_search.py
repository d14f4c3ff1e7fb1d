"""Recipe search: the test accuracy of candidate recipes, many runs at once.

Each line of ``--candidates`` (or each positional argument) is one recipe: ``cnnlab-train``
overrides separated by spaces; a line may start with ``name:``. Every recipe runs once per seed,
``--parallel`` runs at a time, each in its own run dir under ``--out``. Accuracy depends on the
recipe, not on the machine's speed, so the search can run on a machine with many cores or a GPU
(pass the overrides that keep the arithmetic the CPU's, such as ``trainer.precision=32``); the
runs share that machine, so their times say nothing: time the winner alone with
``time_to_accuracy.py``, which also checks its accuracy where it will run.

    python scripts/bench/recipe_search.py --candidates FILE [--seeds 0,1] [--parallel 8] \
        [--common "trainer.precision=32"] --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def read_candidates(args: argparse.Namespace) -> dict[str, list[str]]:
    lines = list(args.recipes)
    if args.candidates:
        lines += Path(args.candidates).read_text().splitlines()
    recipes = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, rest = line.partition(":")
        if not sep or "=" in name:
            name, rest = f"r{len(recipes)}", line
        recipes[name.strip()] = shlex.split(rest)
    return recipes


def run_one(name: str, overrides: list[str], seed: str, out: Path, threads: int) -> dict:
    run_dir = out / f"{name}-seed{seed}"
    argv = [sys.executable, "-m", "cnnlab.cli.train", *overrides, f"seed={seed}"]
    argv += [f"hydra.run.dir={run_dir}", "skip_completed=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=out, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    results = run_dir / "results.json"
    if proc.returncode != 0 or not results.exists():
        tail = (proc.stderr or proc.stdout)[-600:]
        print(f"{name} seed {seed}: failed (exit {proc.returncode}): {tail}", flush=True)
        return {"name": name, "seed": seed, "failed": True}
    data = json.loads(results.read_text())
    acc = data.get("test_acc_tta", data["test_acc"])
    print(f"{name} seed {seed}: test accuracy {acc:.4f} ({wall:.0f} s shared)", flush=True)
    return {"name": name, "seed": seed, "acc": acc, "test_acc": data["test_acc"], "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", help="recipes, one per argument")
    parser.add_argument("--candidates", help="a file of recipes, one per line")
    parser.add_argument("--common", default="", help="overrides added to every recipe")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    recipes = read_candidates(args)
    common = shlex.split(args.common)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(n, [*common, *o], s) for s in args.seeds.split(",") for n, o in recipes.items()]
    with ThreadPoolExecutor(args.parallel) as pool:
        done = list(pool.map(lambda j: run_one(*j, args.out, args.threads), jobs))
    (args.out / "search.json").write_text(json.dumps(done, indent=1))
    rows = []
    for name, overrides in recipes.items():
        accs = [d["acc"] for d in done if d["name"] == name and not d.get("failed")]
        if accs:
            rows.append((statistics.median(accs), min(accs), max(accs), len(accs), name, overrides))
    print("\n| recipe | median | min | max | n | overrides |\n|---|--:|--:|--:|--:|---|")
    for median, lo, hi, n, name, overrides in sorted(rows, reverse=True):
        print(f"| {name} | {median:.4f} | {lo:.4f} | {hi:.4f} | {n} | `{' '.join(overrides)}` |")


if __name__ == "__main__":
    main()
