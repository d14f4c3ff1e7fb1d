"""The top-k classes of a trained model for image files, folders or globs (the core of
``cnnlab-predict``)."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import get_class

from cnnlab.config.schema import TTAMode
from cnnlab.data.image_folder import EXTENSIONS, ImageFiles
from cnnlab.data.images import Geometry
from cnnlab.errors import CnnlabError
from cnnlab.inference.loading import Trained


@dataclass
class Images:
    """Image paths found for the user's arguments, and the arguments that named none."""

    paths: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def find_images(specs: list[str]) -> Images:
    """Files as given (whatever their extension), image files under folders, glob matches."""
    found = Images()
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            found.paths.append(path)
        elif path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
            )
            found.paths += files
            if not files:
                found.problems.append(
                    (spec, f"{spec}: the folder holds no {'/'.join(EXTENSIONS)} files")
                )
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            found.paths += [p for p in matches if p.is_file()]
            if not matches:
                found.problems.append((spec, f"{spec}: no file matches this pattern"))
        else:
            found.problems.append((spec, f"{spec}: no such file or folder"))
    found.paths = list(dict.fromkeys(found.paths))  # a file named twice is predicted once
    return found


def stored_format(trained: Trained) -> tuple[int, int]:
    """(channels, size) at which the run's data module decoded images before the module's own
    preprocessing: its ``stored_format`` (MNIST-family sets store 28x28 grey images whatever
    size the model takes), else the model's channels and size, as an image folder decodes."""
    data = trained.config.data
    try:
        fixed = get_class(data._target_).stored_format
    except Exception:  # a data module this version does not have: decode as an image folder
        fixed = None
    return tuple(fixed) if fixed else (data.channels, data.image_size)


def decode(trained: Trained, paths: list[Path]) -> tuple[list[Path], torch.Tensor, list]:
    """(decoded paths, their uint8 batch, [(path, error)] for the files that failed)."""
    channels, size = stored_format(trained)
    # The image-folder data set's own decoder and evaluation geometry: the same mode conversion,
    # resampling and centre crop (runs from before data.resize squashed the whole image).
    data = trained.config.data
    geometry = Geometry(size, data.get("resize", "squash"), crop_pct=data.get("crop_pct", 0.875))
    files = ImageFiles(paths, [0] * len(paths), channels, size, geometry)
    ok, images, failed = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(files[i][0])
            ok.append(path)
        except CnnlabError as e:
            failed.append((str(path), str(e)))
    batch = torch.stack(images) if images else torch.empty(0, channels, size, size)
    return ok, batch.to(torch.uint8), failed


def predict(
    trained: Trained, paths: list[Path], top_k: int, batch_size: int, tta: TTAMode = TTAMode.none
):
    """Per decoded image {"file", "top": [{"class", "index", "prob"}...]}, and the failures;
    the probabilities averaged over the views of ``tta``."""
    k = min(top_k, len(trained.class_names))
    rows, failures = [], []
    for start in range(0, len(paths), batch_size):
        ok, images, failed = decode(trained, paths[start : start + batch_size])
        failures += failed
        if not ok:
            continue
        probs = trained.probs(images, tta).cpu()
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(ok, top.values, top.indices, strict=True):
            picks = [
                {"class": trained.class_names[i], "index": i, "prob": p}
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            ]
            rows.append({"file": str(path), "top": picks})
    return rows, failures
