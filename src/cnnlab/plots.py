"""Figures shared by the commands and the loggers: confusion matrix, image grids."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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
    rows, cols = grid(len(images))
    fig = Figure(figsize=(1.4 * cols, 1.5 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        # Each image scaled to its own range: the batch arrives normalised.
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
        picture = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
        ax.imshow(picture.numpy(), cmap="gray" if image.shape[0] == 1 else None)
        ax.set_title(title, fontsize=6)
    fig.suptitle("misclassified test images (true -> predicted)")
    fig.tight_layout()
    return fig
