"""Image folders at scale: set-up time and loader throughput, cnnlab against torchvision.

(a) ``setup``: time from nothing to three ready splits for folders of generated 400x300 JPEGs
(100 classes), for cnnlab's first run (fresh cache: listing, index written, statistics of a
512-image sample decoded), its second run (index and statistics from the cache), and
torchvision's ``ImageFolder`` constructor (which lists and sorts, nothing else).
(b) ``loader``: training images per second through a DataLoader with ``--workers`` workers at
``--size`` px (RandomResizedCrop of the full image and a flip), for cnnlab's image folder,
cnnlab's shards of the same images, and torchvision's ImageFolder with the same transforms
(PIL decoding, ``transforms.v2``).

(c) ``train``: the same training three ways, interleaved per seed (``--seeds``, the order
rotated each seed): ``cnnlab-train`` with ``data=image_folder``, a plain PyTorch loop on
torchvision's ``ImageFolder``, and timm's own ``train.py`` (``--timm-train PATH``), on one folder
of Fashion-MNIST as 160x160 RGB JPEGs (``--train-images`` / ``--val-images``, balanced over the
10 classes, in train/<class>/ and val/<class>/ under ``--dir``). timm's ResNet-18 from scratch
for all three, at ``--size`` px, batch ``--batch``, SGD lr ``--lr`` momentum 0.9 without weight
decay, cosine to 0 stepped every batch without warm-up, ``--epochs`` epochs, ``--workers``
workers, fp32 on the CPU, channels_last; RandomResizedCrop (scale 0.08-1) + flip for training,
resize to size / 0.875 + centre crop for evaluation; inputs normalised with the statistics
cnnlab computes for the folder (given to the other two). Per contestant and seed: images/s of
the training epochs (validation left out), time from launching the process to its first
training batch, the share of epoch time spent waiting for data (cnnlab: its own
``data_wait_frac``; the others: timed around their loader, defined alike) and the final
validation top-1; then min/median/max per contestant and the throughput ratios against the
torchvision loop. The children are in ``folder_contestants.py``. What still differs: the
decoders and resampling (cnnlab: torchvision.io and tensor ops; torchvision loop and timm: PIL),
timm's loader (its uint8 collate and prefetcher normalisation, a ColorJitter(0, 0, 0) that
``--color-jitter 0`` leaves in its pipeline, a checkpoint written after each epoch, outside the
timed epochs) and each program's own random streams.
(d) ``wait``: the share of step time ``cnnlab-train`` waits for data (its ``data_wait_frac``),
its training images/s and the CPU cores its process tree kept busy, for ``--model`` at
``--size`` px with ``--workers`` workers on the folder of generated photos, per ``--decode``
(cpu, and gpu where CUDA is available), ``--steps`` training steps per run.

Each method runs in turn within every repeat (interleaved), and the medians and ratios are
printed. The JPEGs are generated once under ``--dir`` (a pool of distinct photos-like images
written many times: set-up reads no pixel, and decoding cost depends on size and entropy).

    uv run python scripts/bench/data_folder.py setup --counts 1000 10000 100000 --repeats 3
    uv run python scripts/bench/data_folder.py loader --images 2000 --repeats 3
    uv run python scripts/bench/data_folder.py train --timm-train /tmp/timm_train.py --seeds 0,1,2
    uv run python scripts/bench/data_folder.py wait --images 2000 --steps 30 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from cnnlab.cli.shards import main as shards_main
from cnnlab.data.idx import read_idx
from cnnlab.data.image_folder import ImageFolder
from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.data.shards import Shards

CLASSES = 100
POOL = 64
HERE = Path(__file__).resolve().parent
CONTESTANTS = ("cnnlab", "torchvision", "timm")


def photo_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(31, 41, 3)).cumsum(0).cumsum(1)
    base = (base - base.min()) / (np.ptp(base) + 1e-9) * 255
    img = Image.fromarray(base.astype(np.uint8)).resize((400, 300), Image.Resampling.BICUBIC)
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (300, 400, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_folder(root: Path, count: int) -> Path:
    folder = root / f"jpegs_{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    pool = [photo_bytes(s) for s in range(POOL)]
    for i in range(count):
        c = i % CLASSES
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{c:03d}" / f"{i:07d}.jpg").write_bytes(pool[i % POOL])
    done.write_text("")
    return folder


def cnnlab_setup(folder: Path, cache: Path) -> None:
    ImageFolder(root=str(folder), num_classes=CLASSES, num_workers=0, cache_dir=str(cache)).setup()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_setup(args) -> None:
    for count in args.counts:
        folder = make_folder(args.dir, count)
        times = {"cnnlab first": [], "cnnlab second": [], "torchvision": []}
        for _ in range(args.repeats):
            cache = Path(tempfile.mkdtemp(dir=args.dir))
            times["cnnlab first"].append(timed(lambda f=folder, c=cache: cnnlab_setup(f, c)))
            times["cnnlab second"].append(timed(lambda f=folder, c=cache: cnnlab_setup(f, c)))
            times["torchvision"].append(timed(lambda f=folder: datasets.ImageFolder(str(f))))
            shutil.rmtree(cache)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{count:>7} images: " + "  ".join(f"{k} {v:.2f}s" for k, v in med.items())
              + f"  (first/torchvision {med['cnnlab first'] / med['torchvision']:.1f}x, "
              f"second/torchvision {med['cnnlab second'] / med['torchvision']:.1f}x)")  # fmt: skip


def drain(loader, limit: int) -> float:
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def bench_loader(args) -> None:
    folder = make_folder(args.dir, args.images)
    shards = args.dir / f"shards_{args.images}"
    if not (shards / "cnnlab.json").exists():
        splits = ["data.val_fraction=0.01", "data.test_fraction=0.01"]
        shards_main([str(shards), "data=image_folder", f"data.root={folder}", *splits])
    cache = Path(tempfile.mkdtemp(dir=args.dir))
    common = dict(image_size=args.size, batch_size=64, num_workers=args.workers, seed=0)
    folder_dm = ImageFolder(root=str(folder), num_classes=CLASSES, val_fraction=0.01,
                            test_fraction=0.01, cache_dir=str(cache), **common)  # fmt: skip
    folder_dm.setup()
    shards_dm = Shards(str(shards), num_classes=CLASSES, **common)
    shards_dm.setup()
    transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(args.size, antialias=True),
                            v2.RandomHorizontalFlip()])  # fmt: skip
    reference = datasets.ImageFolder(str(folder), transform=transform)
    loaders = {
        "cnnlab folder": lambda: folder_dm.train_dataloader(),
        "cnnlab shards": lambda: shards_dm.train_dataloader(),
        "torchvision": lambda: torch.utils.data.DataLoader(
            reference, batch_size=64, shuffle=True, num_workers=args.workers, drop_last=True
        ),
    }
    rates = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            rates[name].append(drain(make(), args.limit))
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["torchvision"]
    print(f"{args.size}px, {args.workers} workers: " + "  ".join(
        f"{k} {v:.0f} img/s ({v / base:.2f}x)" for k, v in med.items()))  # fmt: skip
    shutil.rmtree(cache)


def fmnist_folder(root: Path, train_images: int, val_images: int) -> Path:
    """Fashion-MNIST as 160x160 RGB JPEGs, balanced over its 10 classes: ``train_images`` of its
    training images in train/<class>/, ``val_images`` of its test images in val/<class>/."""
    folder = root / f"fmnist_jpeg_{train_images}_{val_images}"
    if (folder / ".complete").exists():
        return folder
    files = FashionMNIST(root=None, download=False).locate()
    gen = torch.Generator().manual_seed(0)
    for split, key, count in (("train", "train", train_images), ("val", "test", val_images)):
        images, labels = read_idx(files[f"{key}_images"]), read_idx(files[f"{key}_labels"])
        for c in range(10):
            (folder / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            where = (labels == c).nonzero().flatten()
            for i in where[torch.randperm(len(where), generator=gen)[: count // 10]].tolist():
                img = Image.fromarray(images[i].numpy()).convert("RGB")
                img = img.resize((160, 160), Image.Resampling.BICUBIC)
                img.save(folder / split / f"c{c}" / f"{i:05d}.jpg", quality=90)
    (folder / ".complete").write_text("")
    return folder


def read_record(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def last_metrics(cwd: Path) -> dict[str, str]:
    """The last values of each column of the cnnlab run's metrics.csv under ``cwd``."""
    [run_dir] = [p.parent for p in (cwd / "outputs").rglob("results.json")]
    last: dict[str, str] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            last.update({k: v for k, v in row.items() if v})
    return last


def launch(command: list[str], cwd: Path, record: Path) -> dict:
    """Run ``command`` in ``cwd`` to its end; its record, with the time from launch to the first
    batch, the wall time and the CPU time of its process tree (workers included)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    lines = read_record(record)
    epochs = [r for r in lines if "epoch" in r]
    first = next(r["first_batch"] for r in lines if "first_batch" in r)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "images_per_s": sum(r["images"] for r in epochs) / sum(r["seconds"] for r in epochs),
        "first_batch_s": first - start,
        "wait": [r["wait"] for r in epochs if "wait" in r],
        "val_top1": [r["val_top1"] for r in lines if "val_top1" in r],
        "cores": cpu / wall,
    }


def cnnlab_args(args, folder: Path, cache: Path, record: Path) -> list[str]:
    """The cnnlab-train overrides shared by ``train`` and ``wait``."""
    return [
        sys.executable, "-m", "cnnlab.cli.train", "model=timm", f"model.name={args.model}",
        "data=image_folder", f"data.root={folder}", f"data.image_size={args.size}",
        f"data.batch_size={args.batch}", f"data.eval_batch_size={args.batch}",
        f"data.num_workers={args.workers}", "data.crop_pct=0.875", "optimizer=sgd",
        f"optimizer.lr={args.lr}", "optimizer.momentum=0.9", "optimizer.nesterov=false",
        "optimizer.weight_decay=0", "scheduler=cosine", "scheduler.warmup=0", "test=false",
        "trainer.precision=32-true", "module.channels_last=true", f"paths.cache_dir={cache}",
        "+callbacks.bench_timer._target_=folder_contestants.epoch_timer",
        f"+callbacks.bench_timer.record={record}",
    ]  # fmt: skip


def contestant_command(name: str, args, folder: Path, stats, seed: int, out: Path,
                       record: Path) -> list[str]:  # fmt: skip
    mean, std = (f"{v:.6f}" for v in stats[0]), (f"{v:.6f}" for v in stats[1])
    mean, std = list(mean), list(std)
    if name == "cnnlab":
        return [
            *cnnlab_args(args, folder, args.dir / "cache", record),
            "data.test_fraction=0",
            f"trainer.max_epochs={args.epochs}",
            "trainer.accelerator=cpu",
            f"seed={seed}",
        ]
    child = [sys.executable, str(HERE / "folder_contestants.py"), name, "--record", str(record)]
    if name == "torchvision":
        return [
            *child,
            "--root",
            str(folder),
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--workers",
            str(args.workers),
            "--epochs",
            str(args.epochs),
            "--lr",
            str(args.lr),
            "--seed",
            str(seed),
            "--mean",
            *mean,
            "--std",
            *std,
        ]
    return [
        *child, "--timm-train", str(args.timm_train), "--",
        "--data-dir", str(folder), "--train-split", "train", "--val-split", "val",
        "--model", "resnet18", "--num-classes", "10", "--img-size", str(args.size),
        "--crop-pct", "0.875", "--mean", *mean, "--std", *std,
        "--interpolation", "bilinear", "--train-interpolation", "bilinear",
        "--scale", "0.08", "1.0", "--hflip", "0.5", "--color-jitter", "0", "--smoothing", "0",
        "--reprob", "0", "--mixup", "0", "--cutmix", "0",
        "--batch-size", str(args.batch), "--validation-batch-size", str(args.batch),
        "--workers", str(args.workers), "--opt", "momentum", "--lr", str(args.lr),
        "--momentum", "0.9", "--weight-decay", "0", "--sched", "cosine", "--sched-on-updates",
        "--epochs", str(args.epochs), "--warmup-epochs", "0", "--cooldown-epochs", "0",
        "--min-lr", "0", "--device", "cpu", "--channels-last", "--seed", str(seed),
        "--checkpoint-hist", "1", "--output", str(out),
    ]  # fmt: skip


def spread(values: list[float], fmt: str) -> str:
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def bench_train(args) -> None:
    if args.model != "resnet18":
        sys.exit("train compares timm's resnet18 in all three programs: leave --model alone.")
    if args.timm_train is None or not args.timm_train.is_file():
        sys.exit("train needs --timm-train PATH, timm's own train.py (from its repository).")
    folder = fmnist_folder(args.dir, args.train_images, args.val_images)
    setup = ImageFolder(root=str(folder), num_classes=10, image_size=args.size, test_fraction=0,
                        num_workers=0, cache_dir=str(args.dir / "cache"))  # fmt: skip
    setup.setup()
    stats = (setup.mean, setup.std)
    runs = Path(tempfile.mkdtemp(dir=args.dir, prefix="train_runs_"))
    results = {name: [] for name in CONTESTANTS}
    print(
        f"{'contestant':<12} {'seed':>4} {'img/s':>7} {'1st batch':>9} {'wait':>6} {'val top-1':>9}"
    )
    for k, seed in enumerate(args.seeds):
        for name in CONTESTANTS[k % 3 :] + CONTESTANTS[: k % 3]:
            out, record = runs / f"{name}_{seed}", runs / f"{name}_{seed}.jsonl"
            command = contestant_command(name, args, folder, stats, seed, out, record)
            result = launch(command, out, record)
            if name == "cnnlab":
                metrics = last_metrics(out)
                result["val_top1"] = [float(metrics["val_acc"])]
                result["wait"] = [float(metrics[k]) for k in ["data_wait_frac"] if k in metrics]
            results[name].append(result)
            wait = f"{statistics.mean(result['wait']):.1%}" if result["wait"] else "-"
            print(f"{name:<12} {seed:>4} {result['images_per_s']:>7.1f} "
                  f"{result['first_batch_s']:>8.1f}s {wait:>6} {result['val_top1'][-1]:>9.2%}",
                  flush=True)  # fmt: skip
    print("\nmin/median/max over seeds:")
    base = statistics.median(r["images_per_s"] for r in results["torchvision"])
    for name, rs in results.items():
        rate = [r["images_per_s"] for r in rs]
        paired = [r["images_per_s"] / t["images_per_s"]
                  for r, t in zip(rs, results["torchvision"], strict=True)]  # fmt: skip
        first = [r["first_batch_s"] for r in rs]
        print(f"{name:<12} img/s {spread(rate, '.1f')} "
              f"(x torchvision: medians {statistics.median(rate) / base:.2f}, per seed "
              f"{spread(paired, '.2f')})  first batch {spread(first, '.1f')} s"
              f"  val top-1 {spread([r['val_top1'][-1] * 100 for r in rs], '.1f')} %")  # fmt: skip
    shutil.rmtree(runs)


def bench_wait(args) -> None:
    folder = make_folder(args.dir, args.images)
    decodes = [d for d in args.decode if d == "cpu" or torch.cuda.is_available()]
    runs = Path(tempfile.mkdtemp(dir=args.dir, prefix="wait_runs_"))
    results = {d: [] for d in decodes}
    for repeat in range(args.repeats):
        for decode in decodes:
            out, record = runs / f"{decode}_{repeat}", runs / f"{decode}_{repeat}.jsonl"
            command = [*cnnlab_args(args, folder, args.dir / "cache", record),
                       f"data.decode={decode}", "data.val_fraction=0.01",
                       "data.test_fraction=0.01", "trainer.max_epochs=1",
                       f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=0",
                       f"seed={repeat}"]  # fmt: skip
            result = launch(command, out, record)
            result["wait"] = [float(last_metrics(out)["data_wait_frac"])]
            results[decode].append(result)
            print(f"decode={decode} repeat {repeat}: data wait {result['wait'][0]:.1%}, "
                  f"{result['images_per_s']:.1f} img/s, {result['cores']:.2f} cores busy",
                  flush=True)  # fmt: skip
    print(
        f"\n{args.model} at {args.size}px, batch {args.batch}, {args.workers} workers, "
        f"{args.steps} steps; min/median/max over {args.repeats} runs:"
    )
    for decode, rs in results.items():
        print(f"decode={decode}: data wait {spread([r['wait'][0] * 100 for r in rs], '.1f')} %"
              f" of step time, {spread([r['images_per_s'] for r in rs], '.1f')} img/s, "
              f"{spread([r['cores'] for r in rs], '.2f')} cores busy")  # fmt: skip
    shutil.rmtree(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("setup", "loader", "train", "wait"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/cnnlab-bench-jpegs"))
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=1280, help="images drawn per measurement")
    parser.add_argument("--size", type=int, help="px (default: 64 for train, else 224)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timm-train", type=Path, help="timm's train.py (train)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--model", default="resnet18", help="a timm model name (wait)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (wait)")
    parser.add_argument(
        "--decode",
        type=lambda s: s.split(","),
        default=["cpu", "gpu"],
        help="data.decode values (wait; gpu only where CUDA is available)",
    )
    args = parser.parse_args()
    args.size = args.size or (64 if args.what == "train" else 224)
    args.dir.mkdir(parents=True, exist_ok=True)
    modes = {"setup": bench_setup, "loader": bench_loader, "train": bench_train,
             "wait": bench_wait}  # fmt: skip
    modes[args.what](args)


if __name__ == "__main__":
    main()
