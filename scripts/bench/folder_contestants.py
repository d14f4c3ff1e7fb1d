"""The child processes of ``data_folder.py train`` and ``wait``, and what times them alike.

Each contestant appends JSON lines to a ``--record`` file: ``{"first_batch": t}`` (wall-clock
time when the first training batch reached the training loop), one ``{"epoch": e, "images": n,
"seconds": s, "wait": w}`` per training epoch (from the start of the epoch's iteration to the end
of its last step: validation is not in it; ``wait``: the share of that time spent waiting for the
next batch, the first batch of each epoch left out as cnnlab's ``data_wait_frac`` leaves it out)
and, where the contestant validates itself, ``{"val_top1": fraction}`` per epoch.

- ``epoch_timer`` is a Lightning callback for ``cnnlab-train``
  (``+callbacks.bench_timer._target_=folder_contestants.epoch_timer``, with this folder on
  PYTHONPATH); cnnlab's own ``data_wait_frac`` and ``val_acc`` come from its metrics.csv.
- ``torchvision``: a plain PyTorch loop on torchvision's ``ImageFolder`` (PIL decoding and
  transforms, as torchvision's references/classification do).
- ``timm``: timm's own ``train.py`` (``--timm-train PATH``), imported unchanged and run by its
  ``main()``; only its ``train_one_epoch`` gets a timed loader and its ``validate`` is recorded.

This module imports neither cnnlab nor Lightning at the top: a contestant's start-up time is its
own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torchvision import datasets
from torchvision.transforms import v2


class Record:
    """Appends one JSON object per line to ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path, self.first_batch_seen = Path(path), False

    def write(self, **values) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(values) + "\n")

    def first_batch(self) -> None:
        if not self.first_batch_seen:
            self.first_batch_seen = True
            self.write(first_batch=time.time())


class TimedLoader:
    """``loader``, timed per epoch as the module docstring says; anything else is the loader's
    (``len``, attributes)."""

    def __init__(self, loader, record: Record, epoch: int) -> None:
        self.__dict__.update(loader=loader, record=record, epoch=epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __iter__(self):
        start = time.time()
        first_wait = wait = 0.0
        images = 0
        batches = iter(self.loader)
        while True:
            asked = time.time()
            try:
                batch = next(batches)
            except StopIteration:
                break
            got = time.time()
            self.record.first_batch()
            if images:
                wait += got - asked
            else:
                first_wait = got - start
            images += len(batch[1])
            yield batch
        seconds = time.time() - start
        self.record.write(epoch=self.epoch, images=images, seconds=seconds,
                          wait=wait / max(seconds - first_wait, 1e-9))  # fmt: skip


def epoch_timer(record: str):
    """A Lightning callback that writes the same records for ``cnnlab-train``."""
    import lightning as L

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.record = Record(record)
            self.start = self.end = 0.0
            self.images = 0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start, self.images = time.time(), 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.record.first_batch()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.end = time.time()
            self.images += len(batch[1])

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            # Lightning validates before this hook: the epoch ends with its last step.
            self.record.write(epoch=trainer.current_epoch, images=self.images,
                              seconds=self.end - self.start)  # fmt: skip

    return EpochTimer()


def torchvision_loop(args) -> None:
    """ResNet-18 (timm's, as the other contestants train it) on torchvision's ImageFolder:
    RandomResizedCrop + flip for training, resize to size / crop_pct + centre crop for
    evaluation, SGD with momentum and a cosine schedule stepped every batch, no warm-up."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    record = Record(args.record)
    normalize = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                 v2.Normalize(args.mean, args.std)]  # fmt: skip
    train_tf = v2.Compose([v2.RandomResizedCrop(args.size), v2.RandomHorizontalFlip(), *normalize])
    eval_tf = v2.Compose([v2.Resize(math.floor(args.size / args.crop_pct)),
                          v2.CenterCrop(args.size), *normalize])  # fmt: skip
    root = Path(args.root)
    train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    val_set = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    common = dict(batch_size=args.batch, num_workers=args.workers, persistent_workers=True)
    train_loader = torch.utils.data.DataLoader(train_set, shuffle=True, drop_last=True, **common)
    val_loader = torch.utils.data.DataLoader(val_set, **common)
    model = timm.create_model("resnet18", num_classes=len(train_set.classes))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=0)
    steps = args.epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for x, y in TimedLoader(train_loader, record, epoch):
            loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in val_loader:
                logits = model(x.contiguous(memory_format=torch.channels_last))
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
        record.write(val_top1=correct / seen)


def timm_train(args, timm_args: list[str]) -> None:
    """timm's ``train.py`` at ``args.timm_train``, run with ``timm_args`` by its own ``main()``."""
    spec = importlib.util.spec_from_file_location("timm_train", args.timm_train)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = Record(args.record)
    train_one_epoch, validate = module.train_one_epoch, module.validate

    def timed_epoch(epoch, model, loader, *rest, **kwargs):
        return train_one_epoch(epoch, model, TimedLoader(loader, record, epoch), *rest, **kwargs)

    def recorded_validate(*rest, **kwargs):
        metrics = validate(*rest, **kwargs)
        record.write(val_top1=metrics["top1"] / 100)
        return metrics

    module.train_one_epoch, module.validate = timed_epoch, recorded_validate
    sys.argv = [args.timm_train, *timm_args]
    module.main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("contestant", choices=("torchvision", "timm"))
    parser.add_argument("--record", required=True)
    parser.add_argument("--timm-train")
    parser.add_argument("--root")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--crop-pct", type=float, default=0.875)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean", type=float, nargs=3)
    parser.add_argument("--std", type=float, nargs=3)
    # timm's arguments follow "--": several have the names of ours.
    argv = sys.argv[1:]
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (
        argv, [])  # fmt: skip
    args = parser.parse_args(ours)
    if args.contestant == "torchvision":
        torchvision_loop(args)
    else:
        timm_train(args, rest)


if __name__ == "__main__":
    main()
