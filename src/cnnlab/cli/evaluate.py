"""``cnnlab-eval``: a trained model's test-set accuracy, per class and as a confusion matrix.

By default the run's own test split with its own config, so that top-1 reproduces the run's
results.json, with the run's own test-time augmentation (``eval.tta``) so that ``test_acc_tta``
reproduces it too; ``data=<option>`` and ``data.<key>=<value>`` evaluate on another data set's
test split, ``eval.tta=<mode>`` with another test-time augmentation (none, hflip, five_crop,
ten_crop, multiscale: cnnlab.augment.tta; flip stands for hflip)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from cnnlab.augment.tta import CHOICES, tta_mode
from cnnlab.cli.common import add_common_arguments, command, print_written
from cnnlab.config.schema import TTAMode
from cnnlab.errors import CnnlabError
from cnnlab.inference.evaluate import data_config, evaluate
from cnnlab.inference.loading import load, load_test_split
from cnnlab.paths import write_json
from cnnlab.tracking.plots import PRINTED_CLASSES, confusion_figure

OVERRIDES = f"data=<option>, data.<key>=<value> and eval.tta={'|'.join(CHOICES)}"


def parse_overrides(overrides: list[str]) -> tuple[str | None, list[str], TTAMode | None]:
    """(data option, data.<key>=<value> overrides, TTA if given) from Hydra-style ``key=value``
    args."""
    option, data_keys, tta = None, [], None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise CnnlabError(f"{item!r} is not key=value: cnnlab-eval takes {OVERRIDES}.")
        if key == "data":
            option = value
        elif key.startswith("data."):
            data_keys.append(item)
        elif key == "eval.tta":
            tta = tta_mode(value, key)
        else:
            raise CnnlabError(f"{item!r}: cnnlab-eval takes {OVERRIDES}.")
    return option, data_keys, tta


def print_report(report: dict) -> None:
    console = Console(soft_wrap=True)
    tta = report.get("test_acc_tta")
    console.print(
        f"test_acc (top-1) {report['test_acc']:.4f}   test_acc_top5 {report['test_acc_top5']:.4f}"
        + ("" if tta is None else f"   test_acc_tta ({report['tta']}) {tta:.4f}")
        + f"   on {len(report['predictions'])} test images"
    )
    console.print(
        "macro (each class alike): "
        + "   ".join(f"{k} {report[f'test_{k}_macro']:.4f}" for k in ("acc", "precision",
                                                                    "recall", "f1"))
    )  # fmt: skip
    names = report["class_names"]
    show_matrix = len(names) <= PRINTED_CLASSES
    # Borderless with narrow gaps: a 10-class matrix fits an 80-column terminal or log.
    table = Table(
        title="per-class accuracy"
        + (", confusion matrix: true class x predicted class" if show_matrix else ""),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("true class", no_wrap=True)
    table.add_column("acc", justify="right")
    if show_matrix:
        for j in range(len(names)):
            table.add_column(str(j), justify="right")
    for i, name in enumerate(names):
        cells = [str(c) for c in report["confusion_matrix"][i]] if show_matrix else []
        table.add_row(f"{i} {name}", f"{report['per_class_acc'][name]:.3f}", *cells)
    console.print(table)


def output_stem(checkpoint: Path, overrides: list[str]) -> Path:
    """<checkpoint>.eval, or <checkpoint>.eval-<hash of the overrides> for other settings, so
    that evaluations with different data or TTA never overwrite each other."""
    stem = checkpoint.with_suffix("")
    if not overrides:
        return stem.with_name(stem.name + ".eval")
    digest = hashlib.sha1(" ".join(sorted(overrides)).encode()).hexdigest()[:8]
    return stem.with_name(f"{stem.name}.eval-{digest}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-eval",
        description="Evaluate a trained cnnlab model on its run's test split (or another data "
        "set's): top-1/top-5, per-class accuracy, confusion matrix, written beside the "
        "checkpoint as <checkpoint>.eval.json and .png.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"data=<conf/data option>, data.<key>=<value>, eval.tta={'|'.join(CHOICES)} "
        "(default: the run's own eval.tta)",
    )
    return parser.parse_intermixed_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    option, data_keys, tta = parse_overrides(args.overrides)
    trained = load(args.source, args.device)
    config = data_config(trained.config, option, data_keys)
    report = evaluate(trained, load_test_split(config), trained.tta if tta is None else tta)
    report.update(checkpoint=str(trained.checkpoint), overrides=args.overrides)
    print_report(report)
    stem = output_stem(trained.checkpoint, args.overrides)
    json_path, png_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".png")
    write_json(json_path, report)
    title = f"{trained.run_dir.name}: top-1 {report['test_acc']:.4f}"
    fig = confusion_figure(report["confusion_matrix"], report["class_names"], title)
    fig.savefig(png_path, dpi=120)
    print_written(json_path, png_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
