"""``cnnlab-predict``: the top-k classes of a trained model for image files, folders or globs."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from cnnlab.augment.tta import CHOICES, tta_mode
from cnnlab.cli.common import add_common_arguments, command
from cnnlab.errors import CnnlabError
from cnnlab.inference.loading import load
from cnnlab.inference.predict import find_images, predict


def print_table(rows: list[dict]) -> None:
    table = Table(show_edge=False)
    table.add_column("file", no_wrap=True)
    for rank in range(len(rows[0]["top"])):
        table.add_column(f"#{rank + 1}")
    for row in rows:
        table.add_row(row["file"], *(f"{t['class']} {t['prob']:.3f}" for t in row["top"]))
    Console(soft_wrap=True).print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-predict",
        description="Top-k classes and probabilities of a trained cnnlab model for images.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "images",
        nargs="+",
        help="image files, folders (searched recursively), "
        "or glob patterns such as 'photos/**/*.jpg'",
    )
    parser.add_argument("-k", "--top-k", type=int, default=3, help="classes per image (default 3)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--tta",
        choices=CHOICES,
        help="average the class probabilities over the views of this test-time augmentation "
        "(flip stands for hflip; default: the run's own eval.tta)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_intermixed_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trained = load(args.source, args.device)
    found = find_images(args.images)
    tta = trained.tta if args.tta is None else tta_mode(args.tta, "--tta")
    rows, failures = predict(trained, found.paths, max(1, args.top_k), max(1, args.batch_size), tta)
    failures = found.problems + failures
    for _, error in failures:
        print(f"cnnlab-predict: skipped: {error}", file=sys.stderr)
    if args.json:
        errors = [{"file": name, "error": error} for name, error in failures]
        print(json.dumps({"predictions": rows, "errors": errors}, indent=2))
    elif rows:
        print_table(rows)
    if not rows:
        raise CnnlabError(
            f"none of the {len(args.images)} image argument(s) gave a decodable image; "
            "the reasons are listed above."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
