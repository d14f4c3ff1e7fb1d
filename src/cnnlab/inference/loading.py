"""A trained run, from its directory or one of its checkpoints, as a ready model and its config.

Shared by the commands that use trained models (cnnlab-eval, -predict, -export, -explain): each
finds the checkpoint, rebuilds the model from the run config stored inside it, and feeds it
images through the very code that prepared the training batches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.augment.tta import tta_mode, tta_probs
from cnnlab.config.schema import TTAMode
from cnnlab.data.spec import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.runs.checkpoints import find_checkpoint, read_checkpoint
from cnnlab.training.module import ClassificationModule, plain_state_dict
from cnnlab.training.run import build_module, resolve_precision

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
    def tta(self) -> TTAMode:
        """The run's own test-time augmentation, its ``eval.tta`` (none for older runs)."""
        return tta_mode(OmegaConf.select(self.config, "eval.tta", default="none"))

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
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits of uint8 images."""
        with self.autocast():
            return self.module(self.inputs(images)).float()

    def probs(self, images: torch.Tensor, tta: str | TTAMode = TTAMode.none) -> torch.Tensor:
        """Class probabilities of uint8 images, averaged over the views of ``tta`` as in the
        run's own test (its ``test_acc_tta``)."""
        with self.autocast():
            return tta_probs(self.module, self.inputs(images), tta)


def rebuild(config: DictConfig, class_names: list[str]) -> ClassificationModule:
    """The run's module, built by training's own ``build_module`` from the stored config."""
    model_cfg = config.model
    # The checkpoint holds the weights: never fetch a library's pretrained ones again.
    for key, off in (("pretrained", False), ("weights", None), ("weights_file", None)):
        if key in model_cfg:
            model_cfg[key] = off
    data = config.data
    # The statistics come with the checkpoint's weights, in the preprocessing's buffers.
    spec = DataSpec(data.num_classes, data.channels, data.image_size, tuple(class_names))
    try:
        return build_module(config, spec, load_weights=False)
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
    """The run's data module, set up for its test split. Decoded on the CPU whatever the run's
    ``data.decode``: the commands that read it iterate its loader themselves, without the
    Lightning hook that decodes a batch on the device."""
    data = config.data
    if data.get("decode") == "gpu":
        data = OmegaConf.merge(data, {"decode": "cpu"})
    datamodule = instantiate(data)
    datamodule.setup("test")
    return datamodule
