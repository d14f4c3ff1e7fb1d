"""What a trained network looks at, and what its filters respond to.

Three pictures: Grad-CAM heatmaps (Selvaraju et al., 2017) over the given images for the predicted
or a named class; the first convolution's filters, which on natural images become edge and colour
detectors; and one layer's feature maps for the first image, more abstract the deeper the layer.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.tracking.plots import grid

# Feature maps and filters beyond these counts make unreadably small tiles.
MAX_TILES = 64


def layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise CnnlabError(
            f"The model has no layer {name!r}.{hint} Layer names are the dotted paths of "
            "model.named_modules(), e.g. the top-level ones: "
            f"{', '.join(n for n, _ in model.named_children())}."
        ) from None


def record_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the named layers that ran in one forward pass, in the order they
    finished (the last call of a layer that runs twice)."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, out):
            outputs.pop(name, None)
            outputs[name] = out

        return hook

    hooks = [layer(model, name).register_forward_hook(keep(name)) for name in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The shallowest module around the last Conv2d to run that still outputs feature maps: a
    ResNet's last stage, a GoogLeNet's last inception block, a VGG's ``features``. Run order,
    not definition order: auxiliary heads are defined last but skipped in eval mode."""
    names = [name for name, _ in model.named_modules() if name]
    outputs = record_outputs(model, names, x[:1])
    convs = [name for name in outputs if isinstance(layer(model, name), nn.Conv2d)]
    if not convs:
        raise CnnlabError("The model has no Conv2d layer; name the layer to explain with --layer.")
    parts = convs[-1].split(".")
    candidates = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return next(
        name
        for name in candidates
        if isinstance(outputs.get(name), torch.Tensor) and outputs[name].ndim == 4
    )


def grad_cam(
    module: nn.Module, target_layer: nn.Module, x: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) at the input's size: the layer's feature maps weighted by the
    spatial mean of the class score's gradient, summed over channels, negatives set to zero."""
    saved = {}

    def keep(_module, _inputs, out):
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise CnnlabError(
                "The Grad-CAM layer outputs no feature maps (N, C, H, W): name "
                "a convolutional layer or block with --layer."
            )
        saved["maps"] = out
        out.register_hook(lambda grad: saved.__setitem__("grads", grad))

    hook = target_layer.register_forward_hook(keep)
    try:
        logits = module(x)
    finally:
        hook.remove()
    module.zero_grad(set_to_none=True)
    logits.gather(1, classes[:, None]).sum().backward()
    weights = saved["grads"].mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * saved["maps"]).sum(dim=1, keepdim=True)).detach()
    return F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def shown(image: torch.Tensor):
    """A uint8 (C, H, W) image as matplotlib shows it, with its colour map."""
    if image.shape[0] == 1:
        return image[0].numpy(), "gray"
    return image.permute(1, 2, 0).numpy(), None


def plot_cams(images, cams, titles: list[str], path: Path) -> None:
    """Each image above its Grad-CAM overlay."""
    n = len(images)
    fig = Figure(figsize=(2.2 * n, 4.6))
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        picture, cmap = shown(images[i])
        axes[0, i].imshow(picture, cmap=cmap)
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].imshow(picture, cmap=cmap)
        cam = cams[i] / cams[i].max().clamp_min(1e-12)
        axes[1, i].imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_tiles(tiles: torch.Tensor, title: str, path: Path, cmap: str | None) -> None:
    """Tiles (N, H, W) or (N, H, W, 3), each scaled to its own range."""
    tiles = tiles[:MAX_TILES]
    rows, cols = grid(len(tiles))
    fig = Figure(figsize=(1.1 * cols, 1.1 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile in zip(axes.flat, tiles, strict=False):
        low, high = tile.min(), tile.max()
        ax.imshow(((tile - low) / (high - low).clamp_min(1e-12)).numpy(), cmap=cmap)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise CnnlabError("The model has no Conv2d layer, so it has no filters to show.")


def plot_filters(model: nn.Module, path: Path) -> None:
    """Colour filters as RGB pictures; others as the mean over their input channels."""
    name, conv = first_conv(model)
    weight = conv.weight.detach().float().cpu()
    tiles = weight.permute(0, 2, 3, 1) if weight.shape[1] == 3 else weight.mean(dim=1)
    size = "x".join(map(str, conv.kernel_size))
    title = f"first layer ({name}): {weight.shape[0]} filters of {size}"
    plot_tiles(tiles, title, path, cmap=None if weight.shape[1] == 3 else "gray")
