"""Start-up time of ``cnnlab-train``, from the shell.

Three commands run interleaved ``--repeats`` times in fresh processes: ``--cfg job`` (compose and
print the config), ``--help``, and the default experiment up to its first training step: the
time from starting the process to the progress line of step 1 (``every_n_steps=1``), when the
process is killed. Prints the median and spread of the wall time and the median CPU time of
each.

``--src DIR`` (repeatable) times the source trees of other checkouts, with their own conf/,
interleaved with each other (the first is the baseline of the ratios), e.g. before and after a
change: ``git archive <rev> src conf | tar -x -C /tmp/before``, then
``--src /tmp/before --src .``.

    uv run python scripts/bench/startup.py [--repeats 5] [--src DIR ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRST_STEP = "first step"
COMMANDS = {
    "--cfg job": ["--cfg", "job"],
    "--help": ["--help"],
    # Bounded in case the line never comes; the run is killed at the line.
    FIRST_STEP: [
        "callbacks.progress.every_n_steps=1",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=0",
        "test=false",
    ],
}
STEP_LINE = "epoch 0 step 1/"


def timed(src: Path, argv: list[str], cwd: str, until: str | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds from starting ``cnnlab-train ARGV`` of the tree ``src`` to its exit, or
    to its first line that starts with ``until``. CPU time (user + system, all threads) varies
    less than wall time on a machine that others load."""
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cnnlab.cli.train", *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen, wall = [], None
    for line in proc.stdout:
        seen.append(line)
        if until is not None and line.startswith(until):
            wall = time.perf_counter() - start
            proc.send_signal(signal.SIGKILL)
            break
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if wall is None:
        if until is not None or proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} in {src} failed:\n{''.join(seen[-40:])}")
        wall = time.perf_counter() - start
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--src", type=Path, action="append", help="a checkout (default: this)")
    args = parser.parse_args()
    trees = [p.resolve() for p in args.src or [REPO]]
    times = {(tree, name): [] for tree in trees for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            for name, argv in COMMANDS.items():
                for tree in trees:
                    until = STEP_LINE if name == FIRST_STEP else None
                    times[tree, name].append(timed(tree, argv, cwd, until))
    median = statistics.median
    for name in COMMANDS:
        base = times[trees[0], name]
        for tree in trees:
            runs = times[tree, name]
            wall, cpu = [w for w, _ in runs], [c for _, c in runs]
            # Ratios within each round, which ran the trees back to back: the load of the machine
            # changes less within a round than between rounds.
            ratios = (
                f"; per-round ratio to the first: wall "
                f"{median(w / b for (w, _), (b, _) in zip(runs, base, strict=True)):.2f}x, CPU "
                f"{median(c / b for (_, c), (_, b) in zip(runs, base, strict=True)):.2f}x"
                if tree != trees[0]
                else ""
            )
            print(
                f"cnnlab-train {name} [{tree}]: wall median {median(wall):.2f} s "
                f"(min {min(wall):.2f}, max {max(wall):.2f}), CPU median {median(cpu):.2f} s, "
                f"n={len(runs)}{ratios}"
            )


if __name__ == "__main__":
    main()
