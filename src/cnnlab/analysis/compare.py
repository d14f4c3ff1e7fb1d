"""Comparing runs (the core of ``cnnlab-compare``): group runs by the parameters that differ,
aggregate over seeds.

Reads run dirs (results.json, .hydra/ and csv/metrics.csv; any folder above them will do) or,
with ``--wandb``, the runs of a W&B project. Runs are grouped by ``--by`` or else by every
parameter (a config group's choice or a config value) that differs between them, except the
seed; each group gets the mean +- sample standard deviation of the metric over its runs and their
number n. Writes comparison.md, comparison.csv and PNG plots (learning curves with a band of one
standard deviation over seeds, the metric against each grouping parameter and against MACs) and
prints the Markdown table. A skipped run (``same_as``) counts with the metrics of the run it
repeats; failed runs are listed under the table, not aggregated.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnlab.errors import CnnlabError
from cnnlab.paths import RESULTS_FILE
from cnnlab.runs.record import RunRecord, Status, flatten, is_identity

# The seeds that the aggregation averages over.
SEEDS = ("seed", "data.seed")
CURVES = ("val_acc", "train_loss_epoch")


@dataclass
class Run:
    run_dir: str
    status: str
    params: dict[str, str]
    results: dict[str, Any]
    # metric name -> [(epoch, value)]
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def run_params(config: dict, choices: dict) -> dict[str, str]:
    """A run's parameters: its config values and the option chosen in each config group."""
    groups = {k: str(v) for k, v in choices.items() if not k.startswith("hydra")}
    return {**flatten(config), **groups}


def read_curves(metrics_csv: Path) -> dict[str, list[tuple[float, float]]]:
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if not metrics_csv.is_file():
        return curves
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for name in CURVES:
                if row.get(name) and row.get("epoch"):
                    curves[name].append((float(row["epoch"]), float(row[name])))
    return curves


def read_yaml(path: Path) -> dict:
    """A YAML file that Hydra wrote, through libyaml: 15 times faster than OmegaConf.load, which
    parses in pure Python (most of the time of a comparison over a thousand runs). The same values:
    the dumper quoted every string that would read back as another type and wrote floats with a
    point, so the YAML 1.1 rules of the plain loader read them as OmegaConf's do."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_local_run(run_dir: Path) -> Run:
    results = RunRecord.read(run_dir)
    if results is None:
        raise CnnlabError(f"{run_dir / RESULTS_FILE} is not a JSON object of a run's results.")
    hydra_dir = run_dir / ".hydra"
    config = read_yaml(hydra_dir / "config.yaml")
    choices = read_yaml(hydra_dir / "hydra.yaml")["hydra"]["runtime"]["choices"]
    metrics_dir = run_dir
    status = results.get("status")
    if status == Status.SKIPPED and results.same_as is not None:
        # A skipped job repeats an earlier run: its metrics are that run's.
        metrics_dir = results.same_as
        original = RunRecord.read(metrics_dir) or RunRecord(status=Status.MISSING.value)
        results = RunRecord({**original, "same_as": str(metrics_dir)})
    return Run(
        run_dir=str(run_dir),
        status=status,
        params=run_params(config, choices),
        results=results,
        curves=read_curves(metrics_dir / "csv" / "metrics.csv"),
    )


def natural_order(path: Path) -> list:
    """Job 2 before job 10: numbers in a path compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def load_local(paths: list[Path]) -> list[Run]:
    """Every run dir at or below ``paths`` (those with results.json and .hydra/)."""
    dirs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CnnlabError(f"{path} is not a folder. Give run dirs or multirun dirs.")
        found = sorted(
            (p.parent for p in path.rglob(RESULTS_FILE) if (p.parent / ".hydra").is_dir()),
            key=natural_order,
        )
        if not found:
            raise CnnlabError(
                f"{path} holds no cnnlab run (a folder with {RESULTS_FILE} and .hydra/). Give "
                "run dirs (outputs/<date>/<time>_<name>) or multirun dirs (outputs/multirun/...)."
            )
        dirs += found
    runs = [load_local_run(d) for d in dict.fromkeys(dirs)]
    # A skipped run whose original is also compared would count the same training twice.
    compared = {r.run_dir for r in runs}
    return [r for r in runs if r.status != "skipped" or r.results["same_as"] not in compared]


WANDB_STATES = {"finished": "completed", "failed": "failed", "crashed": "failed"}


def load_wandb(project: str) -> list[Run]:
    """The runs of a W&B project (``entity/project``), with the config and summary that cnnlab
    logs (see cnnlab.tracking.reporting)."""
    import wandb

    try:
        api_runs = list(wandb.Api().runs(project))
    except Exception as e:
        raise CnnlabError(f"--wandb {project}: cannot list its runs ({e}).") from None
    runs = []
    for r in api_runs:
        config = dict(r.config)
        choices = config.pop("choices", {})
        summary = {**dict(r.summary), **config.pop("model_summary", {})}
        # One query per curve: W&B returns only the steps that have every key asked for.
        curves = {
            name: [
                (float(h["epoch"]), float(h[name]))
                for h in r.history(keys=["epoch", name], pandas=False)
            ]
            for name in CURVES
        }
        runs.append(
            Run(
                run_dir=r.url,
                status=WANDB_STATES.get(r.state, r.state),
                params=run_params(config, choices),
                results=summary,
                curves=curves,
            )
        )
    return runs


def differing(runs: list[Run]) -> list[str]:
    """The parameters whose values differ between runs, but not the seed, the places runs were
    logged to (no part of a run's identity), nor the values inside a config group whose choice
    differs."""
    keys = sorted({k for r in runs for k in r.params})
    varied = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    ignored = [k for k in varied if k in SEEDS or not is_identity(k)]
    groups = [k for k in varied if "." not in k]
    return [
        k for k in varied if k not in ignored and not any(k.startswith(g + ".") for g in groups)
    ]


@dataclass
class Stat:
    """Values over seeds: their mean and sample standard deviation (0 for one value)."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class Group:
    values: tuple[str, ...]
    runs: list[Run]
    scores: list[float]

    @property
    def mean(self) -> float:
        return Stat(self.scores).mean

    @property
    def std(self) -> float:
        return Stat(self.scores).std

    def first(self, key: str) -> Any:
        return next((r.results[key] for r in self.runs if r.results.get(key) is not None), None)


def group_runs(runs: list[Run], by: list[str], metric: str) -> list[Group]:
    """Runs that completed (or repeat a completed run) grouped by the values of ``by``."""
    buckets: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        if Status.COMPLETED in (run.results.get("status"), run.status):
            buckets[tuple(run.params.get(k, "") for k in by)].append(run)
    groups = []
    for values, members in buckets.items():
        scores = [float(r.results[metric]) for r in members if r.results.get(metric) is not None]
        groups.append(Group(values, members, scores))
    return sorted(groups, key=lambda g: (-g.mean if g.scores else math.inf, g.values))


def _count(n: Any) -> str:
    if n is None:
        return ""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def table_rows(groups: list[Group], by: list[str], metric: str) -> tuple[list[str], list[list]]:
    header = [*by, metric, "std", "n", "params", "MACs"]
    rows = [
        [*g.values, g.mean, g.std, len(g.scores), g.first("params"), g.first("macs")]
        for g in groups
    ]
    return header, rows


def markdown(groups: list[Group], by: list[str], metric: str, failed: list[Run]) -> str:
    header = [*by, f"{metric} (mean ± std)", "n", "params", "MACs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        score = f"{g.mean:.4f} ± {g.std:.4f}" if g.scores else "-"
        cells = [*g.values, score, str(len(g.scores)), _count(g.first("params"))]
        lines.append("| " + " | ".join([*cells, _count(g.first("macs"))]) + " |")
    if failed:
        lines += ["", f"Not aggregated ({len(failed)} runs did not complete):", ""]
        for r in failed:
            error = r.results.get("error", "")
            lines.append(f"- {r.status}: {r.run_dir}" + (f": {error}" if error else ""))
    return "\n".join(lines) + "\n"


def label(group: Group, by: list[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(by, group.values, strict=True)) or "all runs"


def plot_curves(groups: list[Group], by: list[str], path: Path) -> None:
    """Each curve's mean over a group's runs per epoch, with a band of one standard deviation."""
    fig = Figure(figsize=(6 * len(CURVES), 4.5))
    for ax, name in zip(fig.subplots(1, len(CURVES), squeeze=False)[0], CURVES, strict=True):
        for g in groups:
            per_epoch: dict[float, list[float]] = defaultdict(list)
            for r in g.runs:
                for epoch, value in r.curves.get(name, []):
                    per_epoch[epoch].append(value)
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            mean = [statistics.fmean(per_epoch[e]) for e in epochs]
            std = [statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
            [line] = ax.plot(epochs, mean, marker="o", label=label(g, by))
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(epochs, low, high, alpha=0.2, color=line.get_color())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_against_params(groups: list[Group], by: list[str], metric: str, path: Path) -> None:
    """The metric (mean +- std) against each grouping parameter, one panel per parameter."""
    fig = Figure(figsize=(5 * max(1, len(by)), 4))
    axes = fig.subplots(1, max(1, len(by)), squeeze=False)[0]
    for i, (ax, key) in enumerate(zip(axes, by, strict=False)):
        values = sorted({g.values[i] for g in groups})
        for g in groups:
            x = values.index(g.values[i])
            ax.errorbar(x, g.mean, yerr=g.std, fmt="o", capsize=4)
        ax.set_xticks(range(len(values)), values, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_against_macs(groups: list[Group], by: list[str], metric: str, path: Path) -> None:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for g in groups:
        macs = g.first("macs")
        if macs:
            ax.errorbar(macs, g.mean, yerr=g.std, fmt="o", capsize=4)
            ax.annotate(
                label(g, by),
                (macs, g.mean),
                fontsize=7,
                xytext=(4, 4),
                ha="left",
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def compare(runs: list[Run], by: list[str] | None, metric: str, out: Path) -> str:
    """Write the table, CSV and plots into ``out``; return the Markdown table."""
    if not runs:
        raise CnnlabError("No runs to compare.")
    known = {k for r in runs for k in r.params}
    if by is None:
        by = differing(runs)
    unknown = [k for k in by if k not in known]
    if unknown:
        raise CnnlabError(
            f"--by {','.join(unknown)}: no run has such a parameter. Parameters that differ "
            f"between these runs: {', '.join(differing(runs)) or 'none'}; any config key "
            "(e.g. optimizer.lr) or config group (e.g. model, augmentation) is accepted."
        )
    groups = group_runs(runs, by, metric)
    aggregated = {id(r) for g in groups for r in g.runs}
    failed = [r for r in runs if id(r) not in aggregated]
    if not any(g.scores for g in groups):
        raise CnnlabError(
            f"--metric {metric}: no completed run has it. results.json keys of a run: "
            f"{', '.join(sorted(runs[0].results))}."
        )
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(groups, by, metric, failed)
    (out / "comparison.md").write_text(table)
    header, rows = table_rows(groups, by, metric)
    with (out / "comparison.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    plot_curves(groups, by, out / "curves.png")
    plot_against_params(groups, by, metric, out / f"{metric}_by_param.png")
    plot_against_macs(groups, by, metric, out / f"{metric}_vs_macs.png")
    return table
