"""Image data sets as LitData shards (``litdata.optimize``'s chunked format), streamed from a
local folder or object storage (``s3://``) by ``StreamingDataset``/``StreamingDataLoader``.

``cnnlab-shards`` (:func:`write_shards`) writes any cnnlab data module's splits into
``OUT/train``, ``OUT/val`` and ``OUT/test``, one item per image: the file's own bytes (a JPEG
stays the very JPEG, no re-encoding) and its label; in-memory sets are stored as PNG. ``OUT/
cnnlab.json`` keeps the class names, channels, per-split class counts and the normalisation
statistics, so that training from shards reads no image before its first batch.
With ``data.decode=gpu`` the loader's workers hand on JPEG bytes and crops, decoded on the
device (cnnlab.data.images.EncodedBatch).

Remote storage is reached through boto3 as configured by the environment (credentials,
``AWS_ENDPOINT_URL`` for an S3-compatible server), the same for cnnlab and LitData.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import boto3
import botocore.exceptions
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize
from litdata.streaming import downloader as litdata_downloader
from PIL import Image
from torch.utils.data import DataLoader

from cnnlab.data.base import (
    ImageDataModule,
    TensorImages,
    Transform,
    default_workers,
    draw_seed,
    seeded,
)
from cnnlab.data.images import (
    DECODE_ERRORS,
    EncodedBatch,
    Geometry,
    check_decode,
    check_geometry,
    decode,
    encode,
)
from cnnlab.errors import CnnlabError
from cnnlab.paths import write_json

log = logging.getLogger(__name__)

META = "cnnlab.json"
SPLITS = ("train", "val", "test")
HOW_TO_WRITE = (
    "Write shards with cnnlab-shards OUT data=<option> [data.<key>=<value> ...] (for a folder of "
    "images: cnnlab-shards OUT data=image_folder data.root=/path/to/images), then copy OUT to "
    "object storage if wanted (aws s3 sync OUT s3://bucket/prefix) and train with data=shards "
    "data.input_dir=OUT (or the s3:// URI)."
)


def _item(source: tuple[str | bytes, int, int]):
    """One shard item from (file path or encoded bytes, label, channels): a file is stored as
    read if it decodes; an unreadable one yields nothing (it is listed by the writer)."""
    data, label, channels = source
    if isinstance(data, str):
        with open(data, "rb") as f:
            data = f.read()
        try:
            decode(data, channels)
        except DECODE_ERRORS as e:
            log.warning("cnnlab-shards: leaving out unreadable %s (%s)", source[0], e)
            return
    yield {"image": data, "label": label}


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    array = image.permute(1, 2, 0).squeeze(-1).numpy()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _sources(dataset, channels: int) -> list[tuple[str | bytes, int, int]]:
    labels = dataset.labels.tolist()
    if isinstance(dataset, TensorImages):
        return [(_png(image), y, channels) for image, y in zip(dataset.images, labels, strict=True)]
    return [(str(dataset.files[i]), y, channels) for i, y in enumerate(labels)]


def write_shards(
    datamodule: ImageDataModule, output_dir: str, num_workers: int, chunk_bytes: str = "64MB"
) -> dict:
    """Write ``datamodule``'s splits as LitData shards under ``output_dir``; returns the meta."""
    datamodule.setup("fit")
    out = Path(output_dir).expanduser()
    meta = {
        "class_names": list(datamodule.class_names),
        "channels": datamodule.channels,
        "image_size": datamodule.image_size,
        "mean": datamodule.mean,
        "std": datamodule.std,
        "counts": {},
    }
    for split in SPLITS:
        dataset = getattr(datamodule, f"{split}_set")
        sources = _sources(dataset, datamodule.channels)
        optimize(
            fn=_item,
            inputs=sources,
            output_dir=str(out / split),
            chunk_bytes=chunk_bytes,
            num_workers=max(1, min(num_workers, len(sources))),
            mode="overwrite",
            reorder_files=False,
            start_method="fork",
        )
        meta["counts"][split] = torch.bincount(
            dataset.labels, minlength=datamodule.num_classes
        ).tolist()
    write_json(out / META, meta)
    return meta


def _read_meta(input_dir: str) -> dict:
    """``input_dir``/cnnlab.json, or a paragraph saying why it cannot be read."""
    where = f"data.input_dir={input_dir!r}"
    if input_dir.startswith("s3://"):
        bucket, _, prefix = input_dir[len("s3://") :].partition("/")
        key = f"{prefix.rstrip('/')}/{META}" if prefix else META
        try:
            body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            missing = code in ("NoSuchKey", "NoSuchBucket", "404")
            why = f"has no {META}" if missing else f"cannot be read ({code}: {e})"
            raise CnnlabError(f"{where} {why}: it is not a cnnlab shards directory. "
                              f"{HOW_TO_WRITE}") from None  # fmt: skip
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise CnnlabError(
                f"{where} is unreachable ({type(e).__name__}: {e}); check the URI, the "
                "credentials and AWS_ENDPOINT_URL for an S3-compatible server. " + HOW_TO_WRITE
            ) from None
        return json.loads(body)
    if input_dir.startswith(("gs://", "azure://", "hf://")):
        raise CnnlabError(f"{where}: only local folders and s3:// URIs are read. {HOW_TO_WRITE}")
    path = Path(input_dir).expanduser()
    if not path.is_dir():
        raise CnnlabError(f"{where} is not a folder. {HOW_TO_WRITE}")
    if not (path / META).is_file() or not (path / "train" / "index.json").is_file():
        raise CnnlabError(
            f"{where} is not a cnnlab shards directory (it has no {META} and "
            f"train/index.json). {HOW_TO_WRITE}"
        )
    return json.loads((path / META).read_text())


def allow_plain_http() -> None:
    """Let LitData reach an S3-compatible server over plain HTTP (AWS_ENDPOINT_URL=http://...,
    e.g. on a cluster's own network): its obstore-based download path builds its client
    without ``allow_http`` and fails with BadScheme, so chunks go through boto3, which it
    also uses, instead. (A private switch of litdata's, pinned by tests/test_shards.py.)"""
    if os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        litdata_downloader._OBSTORE_AVAILABLE = False


class ShardImages(StreamingDataset):
    """Decodes each stored image through ``geometry`` (and the per-sample ``transform``).
    The random draws of an item come from a generator seeded by the data set's seed, the
    epoch and the item's index, so that a run resumed mid-epoch, with any number of
    workers, crops each image as the uninterrupted run did. ``encoded``: an item is a
    one-image :class:`cnnlab.data.images.EncodedBatch` (a JPEG's bytes and its crop), for
    :func:`collate_encoded` and the device."""

    def __init__(self, input_dir: str, channels: int, geometry: Geometry, encoded: bool = False,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(input_dir, **kwargs)
        self.channels, self.geometry, self.encoded = channels, geometry, encoded
        self.uri = input_dir
        self.image_transform: Transform | None = None

    def __getitem__(self, index):
        item = super().__getitem__(index)
        position = int(getattr(index, "index", index))
        label = torch.tensor(item["label"], dtype=torch.long)
        with seeded(draw_seed(self.seed, self.current_epoch, position)):
            if self.encoded:
                image, crop = encode(item["image"], self.channels, self.geometry)
                name = f"{self.uri} item {position}"
                return EncodedBatch([image], [crop], [name], self.geometry, self.channels), label
            image = self.geometry(decode(item["image"], self.channels))
            if self.image_transform is not None:
                image = self.image_transform(image)
        return image, label


def collate_encoded(items: list[tuple[EncodedBatch, torch.Tensor]]):
    """A batch of encoded :class:`ShardImages` items."""
    return EncodedBatch.join([x for x, _ in items]), torch.stack([y for _, y in items])


class Shards(ImageDataModule):
    """LitData shards written by ``cnnlab-shards`` at ``input_dir`` (a folder or ``s3://``),
    streamed with seeded shuffling, each DDP rank its part, and a loader state that a checkpoint
    keeps for exact mid-epoch resume. Remote chunks are cached in ``cache_dir``.
    ``resize`` etc.: see :class:`cnnlab.data.images.Geometry`."""

    def __init__(
        self,
        input_dir: str,
        num_classes: int,
        channels: int = 3,
        image_size: int = 64,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int | None = None,
        seed: int = 0,
        resize: str = "crop",
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        crop_pct: float = 0.875,
        hflip: bool = True,
        cache_dir: str | None = None,
        normalize: str = "pretrained",
        decode: str = "cpu",
    ) -> None:
        check_geometry(resize, crop_pct)
        check_decode(decode)
        self.decode = decode
        self.input_dir = str(input_dir)
        self.meta = _read_meta(self.input_dir)
        if self.input_dir.startswith("s3://"):
            allow_plain_http()
        names = self.meta["class_names"]
        super().__init__(
            num_classes, channels, image_size, batch_size, eval_batch_size,
            default_workers() if num_workers is None else num_workers, seed,
            normalize=normalize,
        )  # fmt: skip
        self.select_classes(names)
        self.crop = dict(resize=resize, scale=tuple(crop_scale), ratio=tuple(crop_ratio),
                         crop_pct=crop_pct, hflip=hflip)  # fmt: skip
        self.cache_dir = cache_dir
        self.mean, self.std = self.meta["mean"], self.meta["std"]
        if len(self.mean) != channels:  # grey shards for a colour model, or the other way
            self.mean = [sum(self.mean) / len(self.mean)] * channels
            self.std = [sum(self.std) / len(self.std)] * channels

    def _dataset(self, split: str, train: bool):
        uri = self.input_dir.rstrip("/") + "/" + split
        local = not self.input_dir.startswith("s3://")
        cache = None
        if not local and self.cache_dir:
            cache = os.path.join(os.path.expanduser(self.cache_dir), "litdata", uri[5:])
        return ShardImages(
            uri, self.channels, Geometry(self.image_size, train=train, **self.crop),
            encoded=self.decode == "gpu", shuffle=train, drop_last=train, seed=self.seed,
            cache_dir=cache,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._dataset("train", train=True)
        self.val_set = self._dataset("val", train=False)
        self.test_set = self._dataset("test", train=False)
        log.info(
            "shards %s: %d classes, %d train / %d val / %d test images",
            self.input_dir, self.num_classes,
            *(len(s) for s in (self.train_set, self.val_set, self.test_set)),
        )  # fmt: skip

    def class_counts(self) -> torch.Tensor:
        return torch.tensor(self.meta["counts"]["train"])

    def set_train_transform(self, transform: Transform | None) -> None:
        self.check_train_transform(transform)
        self.train_set.image_transform = transform

    def sample_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` training images in their evaluation geometry and their labels (for
        fitted augmentations such as PCA lighting, and the convergence rule's probe): reading
        the first chunks only, not a random draw over every shard."""
        data = self._dataset("train", train=False)
        # Iterated, not indexed: indexing a remote data set in the main process reads a chunk
        # that its download has not finished (an empty buffer); iteration waits for each chunk.
        items = list(itertools.islice(data, min(n, len(data))))
        return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return StreamingDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            collate_fn=collate_encoded if self.decode == "gpu" else None,
        )
