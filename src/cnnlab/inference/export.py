"""Exporting a trained model as ONNX or TorchScript, checked against PyTorch.

The exported network takes normalised float images (N, C, H, W) and returns the main logits
(auxiliary heads are dropped); the preprocessing that turns pixels into that input (mode, size,
mean, std) and the class names travel inside the file as metadata: ONNX metadata_props under the
key ``cnnlab``, a TorchScript extra file ``cnnlab.json``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.inference.loading import Trained, load_test_split
from cnnlab.inference.predict import decode, find_images, stored_format
from cnnlab.training.module import split_outputs

TOLERANCE = 1e-4
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_KEY = "cnnlab"


@contextlib.contextmanager
def quiet_export():
    """Silence the notices that tracing-based export prints for most models: deprecation of
    TorchScript and of the TorchScript-based ONNX exporter (the torch.export one needs the
    onnxscript package), tracer warnings about Python conditions, which hold for the traced
    input size, and constant-folding remarks."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("ignore", message="Constant folding")
        yield


class MainLogits(nn.Module):
    """The network alone, returning the main logits whatever auxiliary outputs it has."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_outputs(self.model(x))[0]


def metadata(trained: Trained) -> dict:
    preprocess = trained.module.preprocess
    channels, size = stored_format(trained)
    return {
        "class_names": trained.class_names,
        "input_size": [preprocess.channels, preprocess.image_size, preprocess.image_size],
        "mean": preprocess.mean.tolist(),
        "std": preprocess.std.tolist(),
        "input": "float32 (N, C, H, W): pixels / 255, resized to input_size, (x - mean) / std",
        "decode": {"mode": "L" if channels == 1 else "RGB", "size": size},
        "checkpoint": str(trained.checkpoint),
    }


def check_images(trained: Trained, specs: list[str], count: int) -> torch.Tensor:
    """uint8 images for the check: the given files, else the first of the run's test split."""
    if specs:
        _, images, _ = decode(trained, find_images(specs).paths[:count])
        if len(images) == 0:
            raise CnnlabError(f"--images {' '.join(specs)}: no decodable image among them.")
        return images
    try:
        datamodule = load_test_split(trained.config)
    except CnnlabError as e:
        raise CnnlabError(
            f"{e} The export check needs real images: name some with --images."
        ) from None
    images, _ = next(iter(datamodule.test_dataloader()))
    return images[:count]


def export_onnx(network: nn.Module, x: torch.Tensor, path: Path, info: dict) -> None:
    import onnx

    with quiet_export():
        torch.onnx.export(
            network,
            (x,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(info))
    onnx.save(proto, str(path))


def onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def export_torchscript(network: nn.Module, x: torch.Tensor, path: Path, info: dict) -> None:
    with quiet_export():
        traced = torch.jit.trace(network, x)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(info)})


def torchscript_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), quiet_export():
        return torch.jit.load(str(path), map_location="cpu")(x)


FORMATS = {
    "onnx": (export_onnx, onnx_logits),
    "torchscript": (export_torchscript, torchscript_logits),
}


def export(trained: Trained, fmt: str, path: Path, images: torch.Tensor) -> float:
    """Write the export of ``trained`` (loaded on the CPU) to ``path``; return the max abs
    difference of its logits from PyTorch's on ``images``, both in fp32."""
    x = trained.inputs(images).contiguous()
    network = MainLogits(trained.module.model).eval()
    write, run = FORMATS[fmt]
    with torch.no_grad():
        expected = network(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(network, x, path, metadata(trained))
    return float((run(path, x) - expected).abs().max())
