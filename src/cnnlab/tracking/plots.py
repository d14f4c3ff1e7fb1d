"""Figures shared by the commands and the loggers: confusion matrix, image grids."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import make_grid

# Beyond this many classes the confusion matrix goes to the JSON and PNG only, not the terminal,
# and its cells carry no numbers.
PRINTED_CLASSES = 20


def grid(count: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def confusion_figure(matrix: list[list[int]], class_names: list[str], title: str) -> Figure:
    """Rows (true classes) coloured by their share, so that rare classes show as clearly."""
    counts = [[int(c) for c in row] for row in matrix]
    shares = [[c / max(1, sum(row)) for c in row] for row in counts]
    n = len(class_names)
    size = max(5.0, 0.45 * n + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if n <= PRINTED_CLASSES:
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                colour = "white" if shares[i][j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def rgb(fig: Figure) -> np.ndarray:
    """A figure as an (H, W, 3) uint8 array, the one image format every logger takes."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def misclassified_figure(images: list[torch.Tensor], titles: list[str]) -> Figure:
    """The images as one mosaic, each captioned with its title: a single axes draws in a fraction
    of the time of one axes per image."""
    rows, cols = grid(len(images))
    # Each image scaled to its own range: the batch arrives normalised.
    scaled = [(x - x.min()) / (x.max() - x.min()).clamp_min(1e-12) for x in images]
    mosaic = make_grid(scaled, nrow=cols, padding=2, pad_value=1.0)
    fig = Figure(figsize=(1.5 * cols, 1.6 * rows + 0.4))
    ax = fig.subplots()
    ax.imshow(mosaic.permute(1, 2, 0).numpy())
    ax.axis("off")
    height, width = images[0].shape[-2:]
    for i, title in enumerate(titles):
        x, y = (i % cols) * (width + 2) + 2, (i // cols) * (height + 2) + 2
        ax.text(x, y, title, fontsize=5, va="top", color="yellow", backgroundcolor="black")
    ax.set_title("misclassified test images (true -> predicted)")
    fig.tight_layout()
    return fig
