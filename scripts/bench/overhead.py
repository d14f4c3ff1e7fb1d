"""Framework overhead: a cnnlab training step against a hand-written PyTorch loop.

Both train the same model on the same uint8 batches of the same data module, with the same
preprocessing, optimizer and schedule. The cnnlab side is the Trainer that ``cnnlab-train``
builds from the default config: its callbacks (checkpointing, LR monitor, the progress bar in
non-interactive mode), CSV logging and torchmetrics accuracy. A step is timed from the start of
one training batch to the start of the next, after ``--warmup`` steps, and the two variants run
interleaved ``--repeats`` times; the script prints median milliseconds per step and the ratio.

    uv run python scripts/bench/overhead.py [--models resnet_small,lenet5] [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from cnnlab.config.compose import compose_config
from cnnlab.data.spec import DataSpec
from cnnlab.optim.factory import build_optimizer, build_scheduler
from cnnlab.training.run import build_module, build_trainer


class StepClock(Callback):
    """Start time of every training batch, and the end time of the last one. On a GPU each step
    waits for its kernels to finish, so that the times are the device's, not the host's."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.end = time.perf_counter()


def per_step(starts: list[float], end: float, warmup: int) -> float:
    return (end - starts[warmup]) / (len(starts) - warmup)


def overrides(model: str, steps: int, out: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        *extra,
        f"model={model}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=0",
        "trainer.enable_model_summary=false",
        "test=false",
        f"paths.output_root={out}",
    ]


def cnnlab_clock(model: str, steps: int, out: Path, extra: tuple[str, ...] = ()) -> StepClock:
    """Train ``steps`` steps with the Trainer ``cnnlab-train`` builds; the steps' times."""
    run_dir = out / f"cnnlab-{time.monotonic_ns()}"
    cfg = compose_config(overrides(model, steps, str(out), extra), output_dir=str(run_dir))
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, DataSpec.of(datamodule))
    trainer = build_trainer(cfg, run_dir)
    clock = StepClock()
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=datamodule)
    return clock


def cnnlab_step(
    model: str, steps: int, warmup: int, out: Path, extra: tuple[str, ...] = ()
) -> float:
    clock = cnnlab_clock(model, steps, out, extra)
    return per_step(clock.starts, clock.end, warmup)


def plain_step(model: str, steps: int, warmup: int, out: Path) -> float:
    cfg = compose_config(overrides(model, steps, str(out)), output_dir=str(out / "plain"))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    # For its model and Preprocess (with the set-up data's statistics), nothing else.
    module = build_module(cfg, DataSpec.of(datamodule))
    net, preprocess = module.model, module.preprocess
    optimizer = build_optimizer(net, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps, steps)
    net.train()
    starts, end = [], 0.0
    for i, (x, y) in enumerate(datamodule.train_dataloader()):
        if i == steps:
            break
        starts.append(time.perf_counter())
        x = preprocess.normalize(preprocess.to_unit_float(x))
        if cfg.module.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        end = time.perf_counter()
    return per_step(starts, end, warmup)


def step_timing_parser(doc: str, steps: int = 40, warmup: int = 5) -> argparse.ArgumentParser:
    """The options of the scripts that time training steps: --steps, --warmup, --repeats."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def main() -> None:
    parser = step_timing_parser(__doc__, steps=60, warmup=10)
    parser.add_argument("--models", default="resnet_small,lenet5")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for model in args.models.split(","):
            times: dict[str, list[float]] = {"plain": [], "cnnlab": []}
            for _ in range(args.repeats):
                times["plain"].append(plain_step(model, args.steps, args.warmup, out))
                times["cnnlab"].append(cnnlab_step(model, args.steps, args.warmup, out))
            plain, ours = (statistics.median(times[k]) for k in ("plain", "cnnlab"))
            print(
                f"{model}: plain loop {plain * 1e3:.2f} ms/step, cnnlab {ours * 1e3:.2f} ms/step,"
                f" ratio {ours / plain:.3f} (medians of {args.repeats}, {args.steps} steps"
                f" after {args.warmup} warm-up)"
            )


if __name__ == "__main__":
    main()
