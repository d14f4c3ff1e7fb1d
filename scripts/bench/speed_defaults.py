"""Speed options of the default experiment, each against the default, measured side by side.

Each variant is a list of ``cnnlab-train`` overrides; all variants and the default run
interleaved ``--repeats`` times, timed per training step as in ``overhead.py``. Prints median
milliseconds per step and the speed-up over the default (>1: the variant is faster).

    uv run python scripts/bench/speed_defaults.py [--repeats 5]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import cnnlab_step, step_timing_parser  # noqa: E402

# name: (overrides, torch threads or None for the default)
VARIANTS: dict[str, tuple[tuple[str, ...], int | None]] = {
    "default (channels_last, fp32, no workers)": ((), None),
    "NCHW memory layout": (("module.channels_last=false",), None),
    "bf16 autocast": (("trainer.precision=bf16-mixed",), None),
    "1 torch thread": ((), 1),
    "2 DataLoader workers": (("data.num_workers=2",), None),
}


def main() -> None:
    parser = step_timing_parser(__doc__)
    parser.add_argument("--model", default="resnet_small")
    args = parser.parse_args()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    print(f"torch {torch.__version__}, CPU bf16 instructions: {bf16 or 'none'}")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (extra, n_threads) in VARIANTS.items():
                torch.set_num_threads(n_threads or threads)
                step = cnnlab_step(args.model, args.steps, args.warmup, Path(tmp), extra)
                times[name].append(step)
    torch.set_num_threads(threads)
    base = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name}: {median * 1e3:.1f} ms/step, speed-up {base / median:.2f}x")


if __name__ == "__main__":
    main()
