"""``cnnlab-explain``: what a trained network looks at, and what its filters respond to.

Three pictures: Grad-CAM heatmaps (Selvaraju et al., 2017) over the given images for the predicted
or a named class; the first convolution's filters, which on natural images become edge and colour
detectors; and one layer's feature maps for the first image, more abstract the deeper the layer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cnnlab.cli.common import add_common_arguments, command, print_written
from cnnlab.errors import CnnlabError
from cnnlab.inference.explain import (
    default_layer,
    grad_cam,
    layer,
    plot_cams,
    plot_filters,
    plot_tiles,
    record_outputs,
)
from cnnlab.inference.loading import Trained, load
from cnnlab.inference.predict import decode, find_images


def class_index(trained: Trained, given: str) -> int:
    """A class by name or index."""
    names = trained.class_names
    if given in names:
        return names.index(given)
    if given.isdigit() and int(given) < len(names):
        return int(given)
    raise CnnlabError(
        f"--class {given!r} is neither a class name nor an index; the classes are: "
        f"{', '.join(f'{i} {n}' for i, n in enumerate(names))}."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-explain",
        description="Grad-CAM heatmaps over images, the first layer's filters and a layer's "
        "feature maps of a trained cnnlab model, as PNG files.",
    )
    add_common_arguments(parser)
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--class",
        dest="target",
        help="explain this class (name or index) instead of each image's predicted class",
    )
    parser.add_argument(
        "--layer", help="Grad-CAM layer, e.g. layer3 (default: the last convolutional stage)"
    )
    parser.add_argument(
        "--feature-layer", help="layer whose feature maps to show (default: the Grad-CAM layer)"
    )
    parser.add_argument("--max-images", type=int, default=8, help="images explained (default 8)")
    parser.add_argument(
        "-o", "--output", type=Path, help="folder for the PNGs (default: <run dir>/explain)"
    )
    return parser.parse_intermixed_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trained = load(args.source, args.device)
    found = find_images(args.images)
    paths, images, failed = decode(trained, found.paths[: max(1, args.max_images)])
    for _, error in found.problems + failed:
        print(f"cnnlab-explain: skipped: {error}", file=sys.stderr)
    if not paths:
        raise CnnlabError("none of the image arguments gave a decodable image (see above).")
    model = trained.module.model
    x = trained.inputs(images)
    cam_layer = args.layer or default_layer(model, x)
    probs = trained.logits(images).softmax(dim=1)
    if args.target is None:
        classes = probs.argmax(dim=1)
    else:
        classes = torch.full((len(x),), class_index(trained, args.target), device=x.device)
    cams = grad_cam(trained.module, layer(model, cam_layer), x, classes).cpu()
    out = args.output or trained.run_dir / "explain"
    out.mkdir(parents=True, exist_ok=True)
    titles = [
        f"{p.name}\n{trained.class_names[c]} ({probs[i, c]:.2f})"
        for i, (p, c) in enumerate(zip(paths, classes.tolist(), strict=True))
    ]
    # The model's view of each image: decoded, then resized and converted as in training.
    seen = trained.module.preprocess.to_unit_float(images.to(x.device)).mul(255).byte().cpu()
    written = [out / "gradcam.png", out / "filters.png"]
    plot_cams(seen, cams, titles, written[0])
    plot_filters(model, written[1])
    feature_layer = args.feature_layer or cam_layer
    maps = record_outputs(model, [feature_layer], x[:1])[feature_layer]
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        raise CnnlabError(f"--feature-layer {feature_layer} outputs no feature maps (N, C, H, W).")
    written.append(out / f"features-{feature_layer}.png")
    title = f"feature maps of {feature_layer} for {paths[0].name}: {maps.shape[1]} channels"
    plot_tiles(maps[0].float().cpu(), title, written[2], cmap="viridis")
    print(f"Grad-CAM layer {cam_layer}")
    print_written(*written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
