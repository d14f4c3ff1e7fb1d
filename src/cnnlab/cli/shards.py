"""``cnnlab-shards``: write a cnnlab data set (an image folder, Fashion-MNIST, CIFAR...) into
LitData's optimized format, to train from with ``data=shards data.input_dir=OUT``.

    cnnlab-shards OUT data=image_folder data.root=/path/to/images [data.<key>=<value> ...]

The data set is composed from the same ``data=`` options and overrides as cnnlab-train (its
splits, class filter and subsets included); each split goes to OUT/<split> in parallel workers
with a progress bar."""

from __future__ import annotations

import argparse

from hydra.utils import instantiate

from cnnlab.cli.common import command
from cnnlab.config.compose import compose_config
from cnnlab.data.base import default_workers
from cnnlab.data.shards import write_shards
from cnnlab.errors import CnnlabError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-shards",
        description="Write a cnnlab data set's train/val/test splits as LitData shards (the "
        "image files' own bytes and labels, chunked) for data=shards data.input_dir=OUT.",
    )
    parser.add_argument("output_dir", help="a local folder (sync it to object storage after)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="data=<conf/data option> and data.<key>=<value>")  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="processes that read the files"
    )
    parser.add_argument("--chunk-bytes", default="64MB", help="size of a shard (default 64MB)")
    return parser.parse_intermixed_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bad = [o for o in args.overrides if o.partition("=")[0].split(".")[0] != "data"]
    if bad or any("=" not in o for o in args.overrides):
        given = " ".join(bad or args.overrides)
        raise CnnlabError(f"cnnlab-shards takes data=<option> and data.<key>=<value>, not {given}.")
    if any(o.startswith("data=shards") for o in args.overrides):
        raise CnnlabError("cnnlab-shards writes shards from another data set, not data=shards.")
    cfg = compose_config(args.overrides)
    meta = write_shards(instantiate(cfg.data), args.output_dir, args.workers, args.chunk_bytes)
    counts = {split: sum(n) for split, n in meta["counts"].items()}
    k = len(meta["class_names"])
    print(f"wrote {args.output_dir}: {k} classes, "
          + ", ".join(f"{n} {split}" for split, n in counts.items()) + " images; train with "
          f"data=shards data.input_dir={args.output_dir} data.num_classes={k}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
