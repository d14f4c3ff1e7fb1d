"""Benchmark: batched vs per-sample `basic` augmentation, and the data-wait share of training.

1. Throughput (images/s) of the `basic` pipeline (random crop of the padded image + flip) on real
   Fashion-MNIST images at 28x28 (1 channel) and 32x32 (3 channels), from uint8 batches to
   augmented float batches: batched (cnnlab.augment.pipeline.RandomCropFlip on the whole batch, as
   ClassificationModule.on_after_batch_transfer runs it) against per sample (torchvision v2
   RandomCrop + RandomHorizontalFlip on each uint8 image, as a DataLoader worker runs it).
   Repeats are interleaved; medians and the ratio are printed.
2. data_wait_frac (cnnlab.training.data_wait.DataWaitMonitor) of the default experiment for
   ``--steps`` training steps, with augmentation none and basic, batched and per sample, with
   0 and 2 DataLoader workers (interleaved over ``--repeats``).

    .venv/bin/python scripts/bench/data_augmentation.py [--repeats 5] [--steps 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from cnnlab.augment.pipeline import PerSample, RandomCropFlip
from cnnlab.config.schema import register
from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.paths import config_dir
from cnnlab.training.run import train


def images(size: int, channels: int, n: int) -> torch.Tensor:
    """n real Fashion-MNIST test images as uint8 (n, channels, size, size)."""
    dm = FashionMNIST(root=None, download=False)
    dm.setup()
    x = dm.train_set.images[: n * channels].float()
    x = torch.cat(x.split(n), 1)  # distinct images as colour planes
    if size != 28:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x.round().to(torch.uint8)


def batched(x: torch.Tensor, op: RandomCropFlip, device: str, batch: int) -> None:
    for chunk in x.split(batch):
        out = op(chunk.to(device).float().div_(255))
    if device == "cuda":
        torch.cuda.synchronize()
    return out


def per_sample(x: torch.Tensor, op: RandomCropFlip, device: str, batch: int) -> None:
    transform = PerSample([op])
    for chunk in x.split(batch):
        out = torch.stack([transform(image) for image in chunk]).to(device).float().div_(255)
    if device == "cuda":
        torch.cuda.synchronize()
    return out


def throughput(repeats: int, device: str, n: int = 4096, batch: int = 256) -> None:
    print(f"## basic augmentation throughput (images/s, median of {repeats}, device {device})")
    print("| images | batched | per sample | batched / per sample |")
    print("|---|---|---|---|")
    op = RandomCropFlip(padding=4, flip=True)
    for size, channels in ((28, 1), (32, 3)):
        x = images(size, channels, n)
        rates: dict[str, list[float]] = {"batched": [], "per_sample": []}
        batched(x[:batch], op, device, batch)  # warm-up
        for _ in range(repeats):
            for name, fn in (("batched", batched), ("per_sample", per_sample)):
                start = time.perf_counter()
                fn(x, op, device, batch)
                rates[name].append(n / (time.perf_counter() - start))
        b, p = statistics.median(rates["batched"]), statistics.median(rates["per_sample"])
        print(f"| {size}x{size}x{channels} | {b:,.0f} | {p:,.0f} | {b / p:.1f}x |")


def wait_fraction(overrides: list[str], out: Path) -> tuple[float, float]:
    """(data_wait_frac, seconds per training step) of one short training run."""
    register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.runtime.cwd = str(Path.cwd())
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        start = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - start
    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return float(next(r["data_wait_frac"] for r in rows if r.get("data_wait_frac"))), seconds


def data_wait(repeats: int, steps: int) -> None:
    settings = {
        "none": ["augmentation=none"],
        "basic batched, 0 workers": ["augmentation=basic"],
        "basic per_sample, 0 workers": ["augmentation=basic", "augmentation.where=per_sample"],
        "basic per_sample, 2 workers": [
            "augmentation=basic",
            "augmentation.where=per_sample",
            "data.num_workers=2",
        ],
    }
    common = [
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=1",
        "test=false",
        "callbacks.progress.every_n_steps=0",
    ]
    found: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for i, (name, extra) in enumerate(settings.items()):
                out = Path(tmp) / f"{r}_{i}"
                found[name].append(wait_fraction([*common, *extra], out))
    print(f"\n## data_wait_frac of the default experiment ({steps} steps, median of {repeats})")
    print("| augmentation | data_wait_frac | run time (s, incl. set-up) |")
    print("|---|---|---|")
    for name, values in found.items():
        frac = statistics.median(v[0] for v in values)
        print(f"| {name} | {frac:.2%} | {statistics.median(v[1] for v in values):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    throughput(args.repeats, args.device)
    if not args.skip_training:
        data_wait(max(1, args.repeats // 2), args.steps)


if __name__ == "__main__":
    main()
