"""``cnnlab-export``: a trained model as ONNX or TorchScript, checked against PyTorch.

The exported network takes normalised float images (N, C, H, W) and returns the main logits
(auxiliary heads are dropped); the preprocessing that turns pixels into that input (mode, size,
mean, std) and the class names travel inside the file as metadata: ONNX metadata_props under the
key ``cnnlab``, a TorchScript extra file ``cnnlab.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from cnnlab.checkpoint import Trained, add_common_arguments, command, load, load_test_split
from cnnlab.errors import CnnlabError
from cnnlab.module import split_outputs
from cnnlab.predict import decode, find_images, stored_format

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-export",
        description="Export a trained cnnlab model to ONNX or TorchScript with its preprocessing "
        "metadata, and check the export's logits against PyTorch's on real test images.",
    )
    add_common_arguments(parser)
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx")
    parser.add_argument(
        "-o", "--output", type=Path, help="output file (default: beside the checkpoint)"
    )
    parser.add_argument(
        "--images", nargs="+", default=[], help="images for the check (default: the test split)"
    )
    parser.add_argument(
        "--check-count", type=int, default=64, help="images in the check (default 64)"
    )
    return parser.parse_intermixed_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trained = load(args.source, "cpu")
    path = args.output or trained.checkpoint.with_suffix(SUFFIXES[args.format])
    images = check_images(trained, args.images, max(1, args.check_count))
    difference = export(trained, args.format, path, images)
    print(f"wrote {path} ({args.format}, input {metadata(trained)['input_size']})")
    verdict = "ok" if difference < TOLERANCE else "FAILED"
    print(
        f"check: max |logits({args.format}) - logits(pytorch)| = {difference:.3g} on "
        f"{len(images)} real images (tolerance {TOLERANCE:g}): {verdict}"
    )
    return 0 if difference < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
