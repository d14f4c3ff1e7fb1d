"""Write the parameters and MACs of every model config into README.md's model table.

    .venv/bin/python scripts/model_table.py

Each conf/model/*.yaml is built with ``cnnlab-summary``'s code at the input it was designed
for: ImageNet networks at 3x224x224 with 1000 classes (EfficientNets and Inception v3 at their
own resolutions), the small ones at their data set's size with 10 classes. The cost_* configs
(single layers, not classifiers) and the by-name wrappers are left out; a config that fails to
build is reported and skipped. The table goes between the markers below in README.md, which
are appended in a "## Models" section if missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from cnnlab.cli.summary import build, summarize

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"

IMAGENET = ((3, 224, 224), 1000)
CIFAR = ((3, 32, 32), 10)
# Inputs other than ImageNet's 224x224, by config name. CIFAR ResNets (stem: cifar) need no
# entry: they are recognised from their config.
INPUTS = {
    "resnet_small": ((1, 28, 28), 10),  # Fashion-MNIST
    "lenet5": ((1, 32, 32), 10),  # MNIST padded to 32x32, as in the paper
    "lenet5_modern": ((1, 32, 32), 10),
    "inception_v3": ((3, 299, 299), 1000),
    # Tan and Le (2019): the resolution each scaled network was designed for.
    **{
        f"efficientnet_b{i}": ((3, size, size), 1000)
        for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    },
}
# Configs that are not one network: their figures would be those of an arbitrary default.
WRAPPERS = {"timm", "torchvision"}


def model_input(path: Path) -> tuple[tuple[int, int, int], int]:
    if path.stem in INPUTS:
        return INPUTS[path.stem]
    return CIFAR if OmegaConf.load(path).get("stem") == "cifar" else IMAGENET


def table_rows() -> tuple[list[str], list[str]]:
    """The markdown rows of the models that build, and 'name: reason' for those that do not."""
    rows, skipped = [], []
    for path in sorted((ROOT / "conf" / "model").glob("*.yaml")):
        name = path.stem
        if name.startswith("cost_") or name in WRAPPERS:
            continue
        shape, classes = model_input(path)
        overrides = [f"model={name}", f"input_shape=[{','.join(map(str, shape))}]"]
        # Other engineers' models may be half-written: one broken config must not stop the table.
        try:
            _, model, _ = build([*overrides, f"num_classes={classes}"])
            _, params, macs = summarize(model, shape)
        except Exception as e:
            skipped.append(f"{name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            continue
        size = "x".join(map(str, shape))
        rows.append(f"| `{name}` | {size}, {classes} classes | {params:,} | {macs:,} |")
        print(f"{name:<24} {size:>11} {params:>13,} params {macs:>16,} MACs", flush=True)
    return rows, skipped


def update_readme(rows: list[str]) -> None:
    block = "\n".join(
        [
            START,
            "Parameters and multiply-accumulates of one image, counted by `cnnlab-summary` "
            "(convolutions and matrix products); regenerate with "
            "`.venv/bin/python scripts/model_table.py`.",
            "",
            "| model | input | params | MACs |",
            "|---|---|--:|--:|",
            *rows,
            END,
        ]
    )
    text = README.read_text()
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Models\n\n" + block + "\n"
    README.write_text(text)


def main() -> None:
    rows, skipped = table_rows()
    update_readme(rows)
    print(f"{len(rows)} models written to {README}")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)


if __name__ == "__main__":
    main()
