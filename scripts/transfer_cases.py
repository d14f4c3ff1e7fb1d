"""The source texts' four transfer-learning cases, with our own pretraining, as a README table.

    .venv/bin/python scripts/transfer_cases.py [--small 20] [--large 1000] [--dry-run]

1. Pretrain resnet_small on Fashion-MNIST classes 0-4 (experiment=transfer/cases_pretrain).
2. Transfer it to Fashion-MNIST classes 5-9 (similar data) and to Animal-MNIST (different data),
   each with ``--small`` and ``--large`` training images per class, with the strategy the texts
   recommend for the case and its alternatives, all at the same budget
   (experiment=transfer/cases_target).
3. Write the test accuracies between the markers below in README.md.

Every run is a normal cnnlab-train run under ./outputs. Cases whose data is not available (the
``data.classes`` filter, ``data=animal_mnist``) are skipped with a note.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.paths import config_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- transfer-cases:start -->", "<!-- transfer-cases:end -->"

DATA = {
    "similar": ["data=fashion_mnist", "data.classes=[5,6,7,8,9]", "data.num_classes=5"],
    "different": ["data=animal_mnist"],
}
# Per case: (strategy, its overrides, recommended by the texts?).
STRATEGIES = {
    ("small", "similar"): [
        ("feature_extract", [], True),
        ("finetune", [], False),
        ("scratch", [], False),
    ],
    ("small", "different"): [
        ("partial", ["transfer.cut_at=layer1", "transfer.freeze_kept=true"], True),
        ("feature_extract", [], False),
        ("scratch", [], False),
    ],
    ("large", "similar"): [
        ("finetune", [], True),
        ("feature_extract", [], False),
        ("scratch", [], False),
    ],
    ("large", "different"): [
        ("finetune", [], True),
        ("scratch", [], True),
        ("partial", ["transfer.cut_at=layer2"], False),
    ],
}
EPOCHS = {"small": 15, "large": 4}


def available() -> dict[str, str | None]:
    """Per target: None if its data can be used here, else why not."""
    if "classes" not in inspect.signature(FashionMNIST).parameters:
        missing = "the data.classes filter (Fashion-MNIST classes 0-4 / 5-9) is not in this cnnlab"
        return dict.fromkeys(DATA, missing)
    animal = Path(config_dir()) / "data" / "animal_mnist.yaml"
    return {"similar": None, "different": None if animal.is_file() else "no data=animal_mnist"}


def train(args: list[str]) -> dict:
    """Run cnnlab-train; return its results.json."""
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.train", *args], capture_output=True, text=True
    )
    run_dir = next(
        (line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("run_dir")),
        None,
    )
    if proc.returncode != 0 or run_dir is None:
        sys.exit(f"cnnlab-train {' '.join(args)} failed:\n{proc.stdout[-3000:]}{proc.stderr}")
    return json.loads((Path(run_dir) / "results.json").read_text())


def table(rows: list[tuple], notes: list[str], args: argparse.Namespace, minutes: float) -> str:
    lines = [
        f"Measured by `.venv/bin/python scripts/transfer_cases.py --small {args.small} --large "
        f"{args.large}` ({minutes:.0f} min on a 2-core CPU): resnet_small pretrained on "
        "Fashion-MNIST classes 0-4, then trained on each target for the same number of epochs "
        f"({EPOCHS['small']} with {args.small} images per class, {EPOCHS['large']} with "
        f"{args.large}). Test accuracy on the target's whole test split; ★ marks the texts' "
        "advice for the case.",
        "",
        "| case | target data | images per class | strategy | test acc |",
        "|---|---|--:|---|--:|",
    ]
    for size, kind, per_class, strategy, extra, advised, acc in rows:
        name = " ".join([strategy, *extra]).replace("transfer.", "")
        star = " ★" if advised else ""
        target = "Fashion-MNIST 5-9" if kind == "similar" else "Animal-MNIST"
        lines.append(f"| {size}, {kind} | {target} | {per_class} | `{name}`{star} | {acc:.2%} |")
    lines += [f"\n{note}" for note in notes]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = README.read_text()
    block = f"{START}\n{text}\n{END}"
    if START in readme:
        head, rest = readme.split(START, 1)
        readme = head + block + rest.split(END, 1)[1]
    else:
        readme = readme.rstrip() + f"\n\n## Transfer learning: the four cases\n\n{block}\n"
    README.write_text(readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=20, help="images per class, little data")
    parser.add_argument("--large", type=int, default=1000, help="images per class, plenty")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, train nothing")
    args = parser.parse_args()
    start = time.perf_counter()
    reasons = available()
    notes = [f"Skipped, {kind} data: {why}." for kind, why in reasons.items() if why]
    for note in notes:
        print(note)
    if all(reasons.values()):
        return
    pretrain = ["experiment=transfer/cases_pretrain"]
    if args.dry_run:
        print("cnnlab-train", *pretrain)
        source = "<pretrain run dir>"
    else:
        source = train(pretrain)["run_dir"]
    rows = []
    for (size, kind), strategies in STRATEGIES.items():
        if reasons[kind]:
            continue
        per_class = args.small if size == "small" else args.large
        for strategy, extra, advised in strategies:
            run = [
                "experiment=transfer/cases_target",
                *DATA[kind],
                f"data.samples_per_class={per_class}",
                f"trainer.max_epochs={EPOCHS[size]}",
                f"transfer={strategy}",
                *extra,
                f"name=case_{size}_{kind}_{strategy}",
            ]
            if strategy != "scratch":
                run.append(f"transfer.init_from={source}")
            if args.dry_run:
                print("cnnlab-train", *run)
                continue
            acc = train(run)["test_acc"]
            print(f"{size}, {kind}, {strategy} {' '.join(extra)}: test_acc {acc:.4f}", flush=True)
            rows.append((size, kind, per_class, strategy, extra, advised, acc))
    if not args.dry_run:
        write_readme(table(rows, notes, args, (time.perf_counter() - start) / 60))
        print(f"wrote the table into {README}")


if __name__ == "__main__":
    main()
