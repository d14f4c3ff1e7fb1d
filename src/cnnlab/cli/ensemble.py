"""``cnnlab-ensemble``: what multi-crop testing and model ensembles buy, and what they cost.

    cnnlab-ensemble outputs/multirun/2026-11-25/22-30-00_sweep [more run dirs ...]
                    [--tta ten_crop] [--out DIR] [--batch-size N] [--repeats R] [--device cpu]

What it computes and writes: :mod:`cnnlab.analysis.ensemble`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.analysis.ensemble import completed_run_dirs, ensemble, markdown
from cnnlab.augment.tta import CHOICES
from cnnlab.cli.common import command, print_written
from cnnlab.config.schema import TTAMode
from cnnlab.paths import write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-ensemble",
        description="Test accuracy and inference time of one model, one model with multi-crop "
        "TTA, the ensemble of the runs (softmax averaged) and the ensemble with TTA.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs or multirun dirs")
    modes = [m for m in CHOICES if m != TTAMode.none.value]
    parser.add_argument("--tta", default="ten_crop", choices=modes, help="default ten_crop")
    parser.add_argument("--out", type=Path, help="where to write (default: <first path>/ensemble)")
    parser.add_argument(
        "--batch-size", type=int, help="test images per batch (default: the run's eval batch)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: a GPU if there is one)"
    )
    return parser.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dirs = completed_run_dirs(args.paths)
    report = ensemble(run_dirs, args.tta, args.repeats, args.batch_size, args.device)
    out = args.out or args.paths[0] / "ensemble"
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    write_json(out / "ensemble.json", report)
    (out / "ensemble.md").write_text(table)
    print(table, end="")
    print_written(out / "ensemble.json", out / "ensemble.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
