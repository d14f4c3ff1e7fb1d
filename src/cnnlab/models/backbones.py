"""Any classifier of timm or torchvision by name, adapted to cnnlab's data.

``timm_model`` and ``torchvision_model`` build a library's model and adapt it in three ways:

- classes: the classifier gets ``num_classes`` outputs;
- channels: with ``in_chans`` other than 3 the first convolution's RGB filters are summed over the
  input channel axis for grey input (repeated and rescaled for other counts), so pretrained
  filters respond to a grey image as they did to the same image in colour;
- small images: ``input_size`` resizes every batch inside the model (e.g. Fashion-MNIST's 28x28
  to the 224x224 an ImageNet network was designed for: Tan and Le 2019 find transfer works better
  at the larger resolution), and ``small_input`` gives the stem stride 1 and drops its max
  pooling, so that 28x28 images keep more than 1x1 pixels to the end without the cost of
  upsampling. ``small_input`` supports the families of ``SMALL_INPUT_STEMS``: torchvision's
  ResNet (resnet*, resnext*, wide_resnet*), EfficientNet (v1 and v2) and MobileNet v2/v3, and
  timm's ResNet family (resnet*, resnext*, seresnet*...) and its EfficientNet/MobileNetV3 classes
  (efficientnet_*, tf_efficientnet_*, mobilenetv1_*, mobilenetv2_*, mobilenetv3_*, mnasnet_*...);
  any other model raises an error that suggests ``input_size``.

Each returned model has a ``min_input_size`` attribute, the smallest square input it accepts, and a
``weights_report`` (:class:`cnnlab.models.weights.LoadReport`, None without weights). Weights are
loaded by the libraries themselves: torchvision's ``weights`` (``IMAGENET1K_V1``, ``DEFAULT``...)
from $TORCH_HOME/hub/checkpoints or the web, timm's ``pretrained`` weights from the Hugging Face
cache or the web, or from a local ``weights_file`` through timm's ``pretrained_cfg_overlay``.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import timm
import torch.nn.functional as F
from timm.models import adapt_input_conv
from timm.models.efficientnet import EfficientNet as TimmEfficientNet
from timm.models.mobilenetv3 import MobileNetV3 as TimmMobileNetV3
from timm.models.resnet import ResNet as TimmResNet
from torch import nn
from torchvision import models as tv_models

from cnnlab.errors import CnnlabError
from cnnlab.models.weights import (
    InputStats,
    LoadReport,
    classifier_layers,
    fetch_error,
    hub_dir,
    is_efficientnet_pytorch,
    load_weights,
    read_file,
    torchvision_weights,
)

# The families whose stem ``small_input`` can make stride 1: for each, the module holding the
# stem's strided convolution (its first convolution is changed) and the stem's max pooling, which
# is removed. The kernels are kept so that pretrained stem filters still apply.
SMALL_INPUT_STEMS: dict[type[nn.Module], tuple[str, str | None]] = {
    tv_models.ResNet: ("conv1", "maxpool"),
    tv_models.EfficientNet: ("features.0", None),
    tv_models.MobileNetV2: ("features.0", None),
    tv_models.MobileNetV3: ("features.0", None),
    TimmResNet: ("conv1", "maxpool"),
    TimmEfficientNet: ("conv_stem", None),
    TimmMobileNetV3: ("conv_stem", None),
}
DEFAULT_MIN_INPUT_SIZE = 32


class BackboneError(CnnlabError, ValueError):
    """An unknown model name or an unsupported option; the command line prints it without a
    traceback."""


def unknown_model(name: str, library: str, known: list[str]) -> BackboneError:
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"Close matches: {', '.join(close)}." if close else "No close match."
    return BackboneError(
        f"{library} has no model named {name!r}. {hint} The {len(known)} names are listed by "
        f"{library}{'.models' if library == 'torchvision' else ''}.list_models()."
    )


def timm_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    small_input: bool = False,
    input_size: int | None = None,
    weights_file: str | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """timm's ``name`` (an optional ``.tag`` picks pretrained weights) with ``num_classes``
    outputs; timm itself adapts the first convolution to ``in_chans`` and drops a classifier of
    another class count. ``weights_file``: the pretrained weights from this local file (a bare
    file name is also looked for in the torch hub cache, $TORCH_HOME/hub/checkpoints); a file
    in EfficientNet-PyTorch's key names is renamed to timm's and loaded by cnnlab's loader
    (cnnlab.models.weights), which checks every key. ``drop_rate``: dropout before the
    classifier (None: the model's default); ``drop_path_rate``: stochastic depth (Huang et al.
    2016), the rate reached by the last block."""
    if not timm.is_model(name):
        raise unknown_model(name, "timm", timm.list_models())
    overlay, foreign = None, None
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file() and path.name == weights_file and (hub_dir() / path).is_file():
            path = hub_dir() / path
        if not path.is_file():
            raise BackboneError(
                f"model.weights_file={weights_file!r} is not a file (nor one in {hub_dir()}). "
                f"Give the path of timm weights for {name} (.safetensors, .pth or .bin)."
            )
        state = read_file(path) if path.suffix in (".pth", ".pt") else {}
        if is_efficientnet_pytorch(state):
            foreign = state
        else:
            overlay = {"file": str(path)}
    try:
        model = timm.create_model(
            name,
            pretrained=pretrained or overlay is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            in_chans=in_chans,
            # Only when set: not every timm model takes them (its VGG has no drop path).
            **({"drop_path_rate": drop_path_rate} if drop_path_rate else {}),
            **({} if drop_rate is None else {"drop_rate": drop_rate}),
        )
    except (OSError, RuntimeError) as e:  # the hub unreachable, or a file of other weights
        raise BackboneError(
            f"timm could not load the pretrained weights of {name} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline, "
            "download them elsewhere and give model.weights_file=<path>."
        ) from None
    model.weights_report = None
    cfg = model.pretrained_cfg
    if foreign is not None:
        model.weights_report = load_weights(model, foreign, str(path))
    elif pretrained or overlay is not None:
        source = overlay["file"] if overlay else "the Hugging Face hub"
        stats = InputStats(list(cfg["mean"]), list(cfg["std"]), f"timm {name}'s")
        model.weights_report = LoadReport(f"timm {name} ({source})", stats=stats)
    if cfg.get("fixed_input_size"):
        min_size = cfg["input_size"][-1]
    else:
        min_size = max(DEFAULT_MIN_INPUT_SIZE, cfg.get("min_input_size", (0, 0, 0))[-1])
    return adapt_to_small_inputs(model, name, small_input, input_size, min_size)


def torchvision_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    small_input: bool = False,
    input_size: int | None = None,
    weights: str | None = None,
) -> nn.Module:
    """torchvision's ``name`` with its classifier replaced by one with ``num_classes`` outputs and
    its first convolution adapted to ``in_chans``. ``weights``: a weights name of the model
    (``IMAGENET1K_V1``, ``DEFAULT``...); ``pretrained`` is short for ``weights=DEFAULT``."""
    known = tv_models.list_models(module=tv_models)
    if name not in known:
        raise unknown_model(name, "torchvision", known)
    chosen = torchvision_weights(weights or "DEFAULT", name) if weights or pretrained else None
    try:
        model = tv_models.get_model(name, weights=chosen)
    except Exception as e:  # only fetching the weights can fail here
        if chosen is None:
            raise
        raise fetch_error(chosen, e) from None
    model.weights_report = None
    if chosen is not None:
        transform = chosen.transforms()
        stats = InputStats(list(transform.mean), list(transform.std), f"torchvision {chosen}'s")
        model.weights_report = LoadReport(
            f"torchvision {chosen}", list(model.state_dict()), stats=stats
        )
    replace_heads(model, num_classes)
    adapt_first_conv(model, in_chans)
    min_size = tv_models.get_model_weights(name).DEFAULT.meta["min_size"][0]
    return adapt_to_small_inputs(
        model, name, small_input, input_size, max(DEFAULT_MIN_INPUT_SIZE, min_size)
    )


def replace_heads(model: nn.Module, num_classes: int) -> None:
    """Give the classifier ``num_classes`` outputs: the last Linear layer, together with every
    other Linear of the same output count (the auxiliary classifiers of GoogLeNet and Inception
    v3); SqueezeNet's last (1x1) convolution, with which it classifies."""
    report = getattr(model, "weights_report", None)
    for path, layer in classifier_layers(model):
        if layer.weight.shape[0] == num_classes:
            continue  # a pretrained classifier of the same classes stays
        if report is not None:
            keys = [f"{path}.{p}" for p, _ in layer.named_parameters()]
            report.loaded = [k for k in report.loaded if k not in keys]
            report.reinitialised += keys
        if isinstance(layer, nn.Linear):
            head = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
        else:
            head = nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size)
        model.set_submodule(path, head)


def adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Make the first convolution take ``in_chans`` channels with timm's rule: for grey input the
    RGB filters summed, which on a grey image gives what the RGB filters gave on that image
    repeated to three channels."""
    if in_chans == 3:
        return
    if getattr(model, "transform_input", False):
        # GoogLeNet and Inception v3 with ported weights renormalise each of R, G and B.
        raise BackboneError(
            "pretrained torchvision GoogLeNet and Inception v3 renormalise the three RGB channels "
            "of their input: use 3-channel data (data.channels=3)"
        )
    path, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    conv.weight = nn.Parameter(adapt_input_conv(in_chans, conv.weight.detach()))
    conv.in_channels = in_chans
    report = getattr(model, "weights_report", None)
    if report is not None:
        report.loaded.remove(f"{path}.weight")
        report.adapted.append(f"{path}.weight")


def resize_input(module: nn.Module, args: tuple, size: int) -> tuple:
    """A forward pre-hook: the model's input resized to ``size`` x ``size``."""
    x = args[0]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=max(x.shape[-2:]) > size)
    return (x, *args[1:])


def adapt_to_small_inputs(
    model: nn.Module, name: str, small_input: bool, input_size: int | None, min_input_size: int
) -> nn.Module:
    """Apply ``small_input`` and ``input_size`` and set ``model.min_input_size``.

    The resize is a forward pre-hook rather than a wrapper module so that the model keeps its
    class, its methods (timm's ``reset_classifier``...) and its state-dict keys.
    """
    if small_input:
        stem = next((v for k, v in SMALL_INPUT_STEMS.items() if isinstance(model, k)), None)
        if stem is None:
            families = ", ".join(f"{k.__module__}.{k.__name__}" for k in SMALL_INPUT_STEMS)
            raise BackboneError(
                f"small_input is not supported for {name} ({type(model).__name__}); it is for "
                f"{families}. Set input_size instead to resize inputs inside the model."
            )
        conv_path, pool_path = stem
        conv = next(m for m in model.get_submodule(conv_path).modules() if isinstance(m, nn.Conv2d))
        conv.stride = (1, 1)
        if pool_path is not None:
            model.set_submodule(pool_path, nn.Identity())
    if input_size is not None:
        model.register_forward_pre_hook(functools.partial(resize_input, size=input_size))
        # Any input is resized to input_size first.
        min_input_size = 1
    model.min_input_size = min_input_size
    return model
