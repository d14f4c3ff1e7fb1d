"""``cnnlab-compare``: group runs by the parameters that differ, aggregate over seeds.

    cnnlab-compare outputs/multirun/2026-11-25/22-30-00_sweep [--by model,augmentation]
                   [--metric test_acc] [--out DIR] [--wandb entity/project]

What it computes and writes: :mod:`cnnlab.analysis.compare`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.analysis.compare import compare, load_local, load_wandb
from cnnlab.cli.common import command, print_written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-compare",
        description="Group runs by the parameters that differ, aggregate the metric over seeds "
        "(mean ± std, n) and write a Markdown table, a CSV and PNG plots.",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="run dirs or multirun dirs")
    parser.add_argument(
        "--by",
        help="comma-separated parameters to group by (default: those "
        "that differ between the runs, except the seed)",
    )
    parser.add_argument("--metric", default="test_acc", help="results.json key (default test_acc)")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write (default: <path>/comparison for one path, ./comparison otherwise)",
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb):
        parser.error("give run dirs or multirun dirs, or --wandb ENTITY/PROJECT (not both)")
    return args


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = load_wandb(args.wandb) if args.wandb else load_local(args.paths)
    out = args.out or (args.paths[0] / "comparison" if len(args.paths) == 1 else Path("comparison"))
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    print(compare(runs, by, args.metric, out), end="")
    print_written(out / "comparison.md", out / "comparison.csv", *sorted(out.glob("*.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
