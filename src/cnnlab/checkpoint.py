"""A trained run, from its directory or one of its checkpoints, as a ready model and its config.

Shared by the commands that use trained models (cnnlab-eval, -predict, -export, -explain): each
finds the checkpoint, rebuilds the model from the run config stored inside it, and feeds it
images through the very code that prepared the training batches.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CnnlabError
from cnnlab.module import ClassificationModule, plain_state_dict
from cnnlab.results import RESULTS_FILE
from cnnlab.run import build_module, resolve_precision

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class Trained:
    """A model restored from ``checkpoint``, in eval mode on ``device``."""

    module: ClassificationModule
    config: DictConfig
    checkpoint: Path
    device: torch.device

    @property
    def class_names(self) -> list[str]:
        return self.module.class_names

    @property
    def run_dir(self) -> Path:
        parent = self.checkpoint.parent
        return parent.parent if parent.name == "checkpoints" else parent

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) as the model's input: converted, resized and normalised by
        the module's own batch hook, exactly as the test batches of training were."""
        x, _ = self.module.on_after_batch_transfer((images.to(self.device), None), 0)
        return x

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed precision the run was tested with on this kind of device (none on a CPU)."""
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        precision = resolve_precision(self.config.trainer.precision, accelerator)
        dtype = AUTOCAST_DTYPES.get(str(precision))
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Float logits of uint8 images; ``flip`` averages them with the mirrored images' (TTA)."""
        with self.autocast():
            out = self.module(self.inputs(images)).float()
            if flip:
                out = (out + self.module(self.inputs(images.flip(-1))).float()) / 2
        return out


def find_checkpoint(source: Path) -> Path:
    """``source`` if it is a file; for a run directory, the checkpoint its test_acc came from."""
    if not source.exists():
        raise CnnlabError(
            f"{source} does not exist. Give a run directory (outputs/<date>/<time>_<name>) or a "
            "checkpoint file of one (<run dir>/checkpoints/*.ckpt)."
        )
    if source.is_file():
        return source
    folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    results = source / RESULTS_FILE
    if results.is_file():
        tested = json.loads(results.read_text()).get("tested_checkpoint")
        # By name: the recorded path is absolute and goes stale when a run dir is moved.
        if tested and (folder / Path(tested).name).is_file():
            return folder / Path(tested).name
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    candidates = [*reversed(best), folder / "last.ckpt", *sorted(folder.glob("*.ckpt"))]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise CnnlabError(
            f"{source} holds no checkpoint: expected {folder}/best-*.ckpt or last.ckpt, which "
            "cnnlab-train writes into every run directory."
        )
    return found


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents; only tensors and plain data are unpickled (weights_only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign files fail in many ways: UnpicklingError, KeyError...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(
            f"{path} is not a checkpoint that PyTorch can read ({first_line}). Give a .ckpt "
            "file written by cnnlab-train, or its run directory."
        ) from None
    info = checkpoint.get("cnnlab") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict) or not info.get("config") or "state_dict" not in checkpoint:
        raise CnnlabError(
            f"{path} is a PyTorch file but not a cnnlab checkpoint: it lacks the 'cnnlab' entry "
            "with the run's config that cnnlab-train stores in every checkpoint, so cnnlab "
            "cannot tell which model it holds."
        )
    return checkpoint


def rebuild(config: DictConfig, class_names: list[str]) -> ClassificationModule:
    """The run's module, built by training's own ``build_module`` from the stored config."""
    model_cfg = config.model
    # The checkpoint holds the weights: never fetch a library's pretrained ones again.
    for key, off in (("pretrained", False), ("weights", None), ("weights_file", None)):
        if key in model_cfg:
            model_cfg[key] = off
    data = config.data
    shape = SimpleNamespace(
        num_classes=data.num_classes,
        channels=data.channels,
        image_size=data.image_size,
        class_names=class_names,
    )
    try:
        return build_module(config, shape, load_weights=False)
    except CnnlabError:
        raise
    except Exception as e:
        raise CnnlabError(
            f"The model of the stored config ({model_cfg.get('_target_')}) cannot be built "
            f"in this cnnlab version: {type(e).__name__}: {e}"
        ) from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise CnnlabError(f"--device {name!r}: {e}") from None


def load(source: str | Path, device: str = "auto") -> Trained:
    """The trained model of a run directory or checkpoint file, in eval mode on ``device``."""
    path = find_checkpoint(Path(source).expanduser())
    checkpoint = read_checkpoint(path)
    config = OmegaConf.create(checkpoint["cnnlab"]["config"])
    module = rebuild(config, checkpoint["cnnlab"].get("class_names") or [])
    try:
        module.load_state_dict(plain_state_dict(checkpoint["state_dict"]))
    except RuntimeError as e:
        raise CnnlabError(
            f"{path}: the weights do not fit the model its stored config builds "
            f"({str(e).splitlines()[0]})."
        ) from None
    target = pick_device(device)
    return Trained(module.to(target).eval(), config, path, target)


def load_test_split(config: DictConfig):
    """The run's data module, set up for its test split."""
    datamodule = instantiate(config.data)
    datamodule.setup("test")
    return datamodule


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="a run directory (its tested, best checkpoint) or a .ckpt file"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: a GPU if there is one)"
    )


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's main: a CnnlabError ends it with a one-paragraph message and exit status
    2, as in cnnlab-train, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except CnnlabError as e:
            print(f"cnnlab: error: {e}", file=sys.stderr)
            return 2

    return wrapper
