"""``cnnlab-export``: a trained model as ONNX or TorchScript, checked against PyTorch.

The exported network takes normalised float images (N, C, H, W) and returns the main logits
(auxiliary heads are dropped); the preprocessing that turns pixels into that input (mode, size,
mean, std) and the class names travel inside the file as metadata: ONNX metadata_props under the
key ``cnnlab``, a TorchScript extra file ``cnnlab.json``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.cli.common import add_common_arguments, command, print_written
from cnnlab.inference.export import FORMATS, SUFFIXES, TOLERANCE, check_images, export, metadata
from cnnlab.inference.loading import load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-export",
        description="Export a trained cnnlab model to ONNX or TorchScript with its preprocessing "
        "metadata, and check the export's logits against PyTorch's on real test images.",
    )
    add_common_arguments(parser)
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx")
    parser.add_argument(
        "-o", "--output", type=Path, help="output file (default: beside the checkpoint)"
    )
    parser.add_argument(
        "--images", nargs="+", default=[], help="images for the check (default: the test split)"
    )
    parser.add_argument(
        "--check-count", type=int, default=64, help="images in the check (default 64)"
    )
    return parser.parse_intermixed_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trained = load(args.source, "cpu")
    path = args.output or trained.checkpoint.with_suffix(SUFFIXES[args.format])
    images = check_images(trained, args.images, max(1, args.check_count))
    difference = export(trained, args.format, path, images)
    print(f"{args.format}, input {metadata(trained)['input_size']}")
    verdict = "ok" if difference < TOLERANCE else "FAILED"
    print(
        f"check: max |logits({args.format}) - logits(pytorch)| = {difference:.3g} on "
        f"{len(images)} real images (tolerance {TOLERANCE:g}): {verdict}"
    )
    print_written(path)
    return 0 if difference < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
