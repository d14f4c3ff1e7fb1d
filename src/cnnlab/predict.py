"""``cnnlab-predict``: the top-k classes of a trained model for image files, folders or globs."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import get_class
from rich.console import Console
from rich.table import Table

from cnnlab.checkpoint import Trained, add_common_arguments, command, load
from cnnlab.data.image_folder import EXTENSIONS, ImageFiles
from cnnlab.errors import CnnlabError


@dataclass
class Images:
    """Image paths found for the user's arguments, and the arguments that named none."""

    paths: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def find_images(specs: list[str]) -> Images:
    """Files as given (whatever their extension), image files under folders, glob matches."""
    found = Images()
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            found.paths.append(path)
        elif path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
            )
            found.paths += files
            if not files:
                found.problems.append(
                    (spec, f"{spec}: the folder holds no {'/'.join(EXTENSIONS)} files")
                )
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            found.paths += [p for p in matches if p.is_file()]
            if not matches:
                found.problems.append((spec, f"{spec}: no file matches this pattern"))
        else:
            found.problems.append((spec, f"{spec}: no such file or folder"))
    found.paths = list(dict.fromkeys(found.paths))  # a file named twice is predicted once
    return found


def stored_format(trained: Trained) -> tuple[int, int]:
    """(channels, size) at which the run's data module decoded images before the module's own
    preprocessing: its ``stored_format`` (MNIST-family sets store 28x28 grey images whatever
    size the model takes), else the model's channels and size, as an image folder decodes."""
    data = trained.config.data
    try:
        fixed = get_class(data._target_).stored_format
    except Exception:  # a data module this version does not have: decode as an image folder
        fixed = None
    return tuple(fixed) if fixed else (data.channels, data.image_size)


def decode(trained: Trained, paths: list[Path]) -> tuple[list[Path], torch.Tensor, list]:
    """(decoded paths, their uint8 batch, [(path, error)] for the files that failed)."""
    channels, size = stored_format(trained)
    # The image-folder data set's own decoder: the same mode conversion and resampling.
    files = ImageFiles(paths, [0] * len(paths), channels, size)
    ok, images, failed = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(files[i][0])
            ok.append(path)
        except CnnlabError as e:
            failed.append((str(path), str(e)))
    batch = torch.stack(images) if images else torch.empty(0, channels, size, size)
    return ok, batch.to(torch.uint8), failed


def predict(trained: Trained, paths: list[Path], top_k: int, batch_size: int, flip: bool = False):
    """Per decoded image {"file", "top": [{"class", "index", "prob"}...]}, and the failures."""
    k = min(top_k, len(trained.class_names))
    rows, failures = [], []
    for start in range(0, len(paths), batch_size):
        ok, images, failed = decode(trained, paths[start : start + batch_size])
        failures += failed
        if not ok:
            continue
        probs = trained.logits(images, flip=flip).softmax(dim=1).cpu()
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(ok, top.values, top.indices, strict=True):
            picks = [
                {"class": trained.class_names[i], "index": i, "prob": p}
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            ]
            rows.append({"file": str(path), "top": picks})
    return rows, failures


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
        choices=("none", "flip"),
        default="none",
        help="flip: average the logits with those of the mirrored image",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_intermixed_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trained = load(args.source, args.device)
    found = find_images(args.images)
    rows, failures = predict(
        trained, found.paths, max(1, args.top_k), max(1, args.batch_size), args.tta == "flip"
    )
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
