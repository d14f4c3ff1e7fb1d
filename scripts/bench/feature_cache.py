"""Training epochs of ``transfer=feature_extract`` with and without the feature cache.

    .venv/bin/python scripts/bench/feature_cache.py [--repeats 3] [--epochs 3] [-- overrides...]

Runs the real command line (experiment=transfer/mnv2_feature_extract: ImageNet MobileNetV2 at
64x64 on 1,000 Fashion-MNIST images, validation off), alternately with
``transfer.cache_features=false`` and ``true``, and reads the epoch times that cnnlab-train
prints. Uncached, every epoch runs the frozen backbone; cached, the cache is filled once before
the first epoch (outside the epoch times; the run's wall time shows it) and every epoch trains
the head on it. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile

EPOCH = re.compile(r"epoch (\d+) done in ([\d.]+)s")


def epoch_times(cache: bool, epochs: int, overrides: list[str], cwd: str) -> list[float]:
    args = [
        "experiment=transfer/mnv2_feature_extract",
        f"transfer.cache_features={str(cache).lower()}",
        f"trainer.max_epochs={epochs}",
        "trainer.limit_val_batches=0",
        "test=false",
        *overrides,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.train", *args], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(proc.stdout + proc.stderr)
    times = dict(EPOCH.findall(proc.stdout + proc.stderr))
    return [float(times[str(e)]) for e in range(epochs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="more cnnlab-train overrides")
    args = parser.parse_args()
    uncached, first, cached = [], [], []
    with tempfile.TemporaryDirectory() as cwd:
        for repeat in range(args.repeats):
            uncached += epoch_times(False, args.epochs, args.overrides, cwd)
            times = epoch_times(True, args.epochs, args.overrides, cwd)
            first.append(times[0])
            cached += times[1:]
            print(f"repeat {repeat}: uncached {uncached[-args.epochs :]}, cached {times}")
    recompute, lookup = statistics.median(uncached), statistics.median(cached)
    print(f"median epoch, recomputing the backbone: {recompute:.2f} s ({len(uncached)} epochs)")
    print(f"median first epoch with the cache: {statistics.median(first):.2f} s")
    print(f"median later epoch with the cache: {lookup:.3f} s ({len(cached)} epochs)")
    print(f"speed-up of an epoch after the first: {recompute / lookup:.1f}x")


if __name__ == "__main__":
    main()
