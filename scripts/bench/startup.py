"""Start-up time of ``cnnlab-train``, from the shell.

Three commands run interleaved ``--repeats`` times in fresh processes: ``--cfg job`` (compose and
print the config), ``--help``, and a run of the default experiment stopped after its first
training step (``trainer.max_steps=1``, no validation or test): an upper bound on the time from
the shell to the first training step, since it also saves the checkpoint and exits. Prints the
median and spread of each.

    uv run python scripts/bench/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time

COMMANDS = {
    "--cfg job": ["--cfg", "job"],
    "--help": ["--help"],
    "first step": [
        "trainer.max_steps=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_model_summary=false",
        "test=false",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("cnnlab-train")
    if exe is None:
        raise SystemExit("cnnlab-train is not on PATH: run this with `uv run`.")
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            for name, argv in COMMANDS.items():
                start = time.perf_counter()
                subprocess.run([exe, *argv], cwd=cwd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(
            f"cnnlab-train {name}: median {statistics.median(values):.2f} s "
            f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
        )


if __name__ == "__main__":
    main()
