"""Speed options of the default experiment, each against the default, measured side by side.

Each variant is a list of ``cnnlab-train`` overrides; all variants and the default run
interleaved ``--repeats`` times, timed per training step as in ``overhead.py``. Prints median
milliseconds per step after the warm-up, the speed-up over the default (>1: the variant is
faster), the first step's time (which holds ``torch.compile``'s compilation) and the number of
steps after which a variant with a slower first step has paid for it. On a GPU the precision
variant is fp32 (the default there is bf16 autocast); on a CPU it is bf16 autocast.

    uv run python scripts/bench/speed_defaults.py [--repeats 5]
    uv run python scripts/bench/speed_defaults.py --common "model.stem_pool=false"
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import cnnlab_clock, per_step, step_timing_parser  # noqa: E402


def variants() -> dict[str, tuple[tuple[str, ...], int | None]]:
    """name: (overrides, torch threads or None for the default)."""
    precision = (
        ("fp32 (`trainer.precision=32`)", "32")
        if torch.cuda.is_available()
        else ("bf16 autocast (`trainer.precision=bf16-mixed`)", "bf16-mixed")
    )
    table = {
        "default": ((), None),
        "NCHW layout (`module.channels_last=false`)": (("module.channels_last=false",), None),
        precision[0]: ((f"trainer.precision={precision[1]}",), None),
        "torch.compile (`module.compile=true`)": (("module.compile=true",), None),
        "1 torch thread": ((), 1),
        "2 DataLoader workers (`data.num_workers=2`)": (("data.num_workers=2",), None),
    }
    if torch.cuda.is_available():
        # CUDA graphs replay a step's kernels in one launch; on the CPU this is plain compile.
        graphs = ("module.compile=true", "module.compile_mode=reduce-overhead")
        table["CUDA graphs (`module.compile_mode=reduce-overhead`)"] = (graphs, None)
    return table


def main() -> None:
    parser = step_timing_parser(__doc__)
    parser.add_argument("--model", default="resnet_small")
    parser.add_argument(
        "--common", default="", help="overrides for every variant, e.g. another network's widths"
    )
    args = parser.parse_args()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, CPU bf16 instructions: {bf16 or 'none'}, GPU: {gpu}")
    table = variants()
    common = tuple(args.common.split())
    steps: dict[str, list[float]] = {name: [] for name in table}
    firsts: dict[str, list[float]] = {name: [] for name in table}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (extra, n_threads) in table.items():
                torch.set_num_threads(n_threads or threads)
                clock = cnnlab_clock(args.model, args.steps, Path(tmp), (*common, *extra))
                steps[name].append(per_step(clock.starts, clock.end, args.warmup))
                firsts[name].append(clock.starts[1] - clock.starts[0])
    torch.set_num_threads(threads)
    base, base_first = (statistics.median(t["default"]) for t in (steps, firsts))
    print(
        "| variant | ms/step | speed against the default | first step (s): median, slowest"
        " | pays off after |"
    )
    print("|---|--:|--:|--:|--:|")
    for name in table:
        step, first = statistics.median(steps[name]), statistics.median(firsts[name])
        extra_first, saved = first - base_first, base - step
        if name == "default":
            payoff = "-"
        elif saved <= 0:
            payoff = "never"
        elif extra_first <= 0:
            payoff = "at once"
        else:
            payoff = f"{extra_first / saved:.0f} steps"
        print(
            f"| {name} | {step * 1e3:.1f} | {base / step:.2f}x"
            f" | {first:.2f}, {max(firsts[name]):.2f} | {payoff} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
