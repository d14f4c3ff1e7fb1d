"""Compute efficiency: the default training step's achieved FLOP/s against the machine's peak.

Work per image is MACs x 2 (a multiply-add is two FLOPs) x 3 (forward, plus a backward pass
that costs about twice the forward), with the MACs that ``cnnlab-summary`` counts. The peak is
a large fp32 matrix product measured in the same run. Training steps come from the overhead
benchmark's hand-written loop and from cnnlab's Trainer, interleaved.

    uv run python scripts/bench/efficiency.py [--model resnet_small] [--repeats 5]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from cnnlab.config.compose import compose_config
from cnnlab.tracking.profile import summarize

sys.path.insert(0, str(Path(__file__).parent))
from overhead import cnnlab_step, plain_step, step_timing_parser  # noqa: E402


def gemm_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: thread pool and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    parser = step_timing_parser(__doc__)
    parser.add_argument("--model", default="resnet_small")
    args = parser.parse_args()
    cfg = compose_config([f"model={args.model}"])
    shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    _, params, macs = summarize(instantiate(cfg.model), shape)
    batch = cfg.data.batch_size
    step_flops = macs * 2 * 3 * batch
    peak, plain, ours = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            peak.append(gemm_flops())
            plain.append(plain_step(args.model, args.steps, args.warmup, Path(tmp)))
            ours.append(cnnlab_step(args.model, args.steps, args.warmup, Path(tmp)))
    peak_s = statistics.median(peak)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.model}: {params:,} parameters, {macs:,} MACs per image, batch {batch}")
    print(f"peak (2048x2048 fp32 matmul): {peak_s / 1e9:.1f} GFLOP/s")
    for name, times in (("plain loop", plain), ("cnnlab", ours)):
        achieved = step_flops / statistics.median(times)
        print(
            f"{name}: {statistics.median(times) * 1e3:.1f} ms/step, {achieved / 1e9:.1f} GFLOP/s,"
            f" {achieved / peak_s:.1%} of peak"
        )


if __name__ == "__main__":
    main()
