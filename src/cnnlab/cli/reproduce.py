"""Reproduce the source texts' claims and write their measured tables into docs/ablations.md.

    python scripts/reproduce.py <name>... | all  [--scale ci|cpu|device|gpu] [--ci-size]
                                                 [--doc FILE]

What it computes and writes: :mod:`cnnlab.analysis.ablation`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.analysis.ablation import DOC, SCALES, names, reproduce, scale_folder
from cnnlab.cli.common import command
from cnnlab.errors import CnnlabError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reproduce.py", description="Run the source texts' ablations and write their results."
    )
    parser.add_argument(
        "names", nargs="+", help="ablation names (files of conf/experiment/ablation) or all"
    )
    parser.add_argument(
        "--scale", choices=SCALES, default="cpu",
        help="ci: seconds, for CI; cpu: minutes per claim on a 2-core CPU (the page); device: "
        "one GPU, the jobs of a claim in parallel on it; gpu: the papers' data sets (CIFAR-10)",
    )  # fmt: skip
    parser.add_argument(
        "--ci-size", action="store_true",
        help="the scale's settings (launcher, data sets, models) at the ci scale's sizes: a "
        "check, in seconds, that the scale runs end to end",
    )  # fmt: skip
    parser.add_argument(
        "--doc", type=Path,
        help=f"the page to write (default: {DOC} at cpu scale, else "
        "<output root>/ablations/<scale>[_ci]/ablations.md)",
    )  # fmt: skip
    parser.add_argument("--output-root", type=Path, default=Path("outputs"))
    parser.add_argument(
        "--sweep-dir",
        type=Path,
        help="judge and write up this earlier sweep of the (one) claim instead of running it",
    )
    return parser.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = names() if args.names == ["all"] else args.names
    if args.sweep_dir and len(chosen) != 1:
        raise CnnlabError(f"--sweep-dir {args.sweep_dir} is the sweep of one claim; name one.")
    folder = scale_folder(args.scale, args.ci_size)
    doc = args.doc or (
        DOC if folder == "cpu" else args.output_root / "ablations" / folder / "ablations.md"
    )
    failures = []
    for name in chosen:
        try:
            reproduce(name, args.scale, doc, args.output_root, args.sweep_dir, args.ci_size)
        except CnnlabError as e:
            print(f"[{name}] {e}", file=sys.stderr, flush=True)
            failures.append(name)
    if failures:
        print(f"Failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
