"""Time to accuracy: an experiment run from the shell once per seed, wall time and test accuracy.

Wall time is the whole ``cnnlab-train`` process (start-up, data, training, test, TTA), which is
what the recipe targets count. Prints each run, then the median and spread over seeds.

    uv run python scripts/bench/time_to_accuracy.py experiment=fast_fmnist [--seeds 0,1,2]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="+", help="cnnlab-train overrides")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    exe = shutil.which("cnnlab-train")
    if exe is None:
        raise SystemExit("cnnlab-train is not on PATH: run this with `uv run`.")
    walls, accs = [], []
    with tempfile.TemporaryDirectory() as cwd:
        for seed in args.seeds.split(","):
            start = time.perf_counter()
            run_dir = Path(cwd) / f"seed{seed}"
            argv = [exe, *args.overrides, f"seed={seed}", f"hydra.run.dir={run_dir}"]
            subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
            data = json.loads((run_dir / "results.json").read_text())
            accs.append(data.get("test_acc_tta", data["test_acc"]))
            # Wall time per epoch, start-up and test included: what an epoch costs on this
            # machine, to set trainer.max_epochs from on another one.
            print(
                f"seed {seed}: {walls[-1]:.1f} s wall ({walls[-1] / data['epochs']:.1f} s per epoch"
                f" of {data['epochs']}), test accuracy {accs[-1]:.4f}"
                f" (last epoch's training accuracy {data['final_train_acc']:.4f})",
                flush=True,
            )
    print(
        f"{' '.join(args.overrides)}: test accuracy median {statistics.median(accs):.4f} "
        f"(min {min(accs):.4f}, max {max(accs):.4f}); wall median {statistics.median(walls):.1f} s "
        f"(min {min(walls):.1f}, max {max(walls):.1f}); n={len(accs)}"
    )


if __name__ == "__main__":
    main()
