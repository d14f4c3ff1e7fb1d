"""Image folders at scale: set-up time and loader throughput, cnnlab against torchvision.

(a) ``setup``: time from nothing to three ready splits for folders of generated 400x300 JPEGs
(100 classes), for cnnlab's first run (fresh cache: listing, index written, statistics of a
512-image sample decoded), its second run (index and statistics from the cache), and
torchvision's ``ImageFolder`` constructor (which lists and sorts, nothing else).
(b) ``loader``: training images per second through a DataLoader with ``--workers`` workers at
``--size`` px (RandomResizedCrop of the full image and a flip), for cnnlab's image folder,
cnnlab's shards of the same images, and torchvision's ImageFolder with the same transforms
(PIL decoding, ``transforms.v2``).

Each method runs in turn within every repeat (interleaved), and the medians and ratios are
printed. The JPEGs are generated once under ``--dir`` (a pool of distinct photos-like images
written many times: set-up reads no pixel, and decoding cost depends on size and entropy).

    uv run python scripts/bench/data_folder.py setup --counts 1000 10000 100000 --repeats 3
    uv run python scripts/bench/data_folder.py loader --images 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from cnnlab.cli.shards import main as shards_main
from cnnlab.data.image_folder import ImageFolder
from cnnlab.data.shards import Shards

CLASSES = 100
POOL = 64


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("setup", "loader"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/cnnlab-bench-jpegs"))
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=1280, help="images drawn per measurement")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    bench_setup(args) if args.what == "setup" else bench_loader(args)


if __name__ == "__main__":
    main()
