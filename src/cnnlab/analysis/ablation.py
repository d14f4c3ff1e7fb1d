"""Reproduce the source texts' claims: run an ablation experiment, aggregate it over seeds,
judge the claim and write the result into the ablations page.

Each claim is an experiment under conf/experiment/ablation/ whose ``ablation`` section states the
claim, the paper's figure, how to group the runs, what the claim predicts (``expect``) and the
overrides of each scale; the experiment itself is the ``cpu`` scale. The runner starts
``cnnlab-train -m experiment=ablation/<name>`` with the scale's overrides (an idempotent multirun:
a second call skips what completed), groups the runs as ``cnnlab-compare`` does, and judges each
prediction: *reproduced* when the difference has the predicted sign and exceeds the seed spread
(the larger standard deviation of the two groups), *not reproduced at this scale* when it has the
other sign and exceeds the spread, *inconclusive* within the spread. A prediction about a
trained figure (anything but the costs of :data:`COST_METRICS`) made on runs of which any did not
converge (results.json's ``converged``, cnnlab.training.convergence) is *inconclusive (not
converged)*, whatever the figures say: it would measure under-training, not the claim. The
claim's verdict is the worst of its predictions. The section of the page between the claim's
markers is replaced; the others, and the page's text above its table of claims, are kept.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.analysis.compare import Group, Run, Stat, group_runs, load_local, plot_curves
from cnnlab.analysis.ensemble import completed_run_dirs, ensemble, markdown
from cnnlab.config.compose import compose_config
from cnnlab.errors import CnnlabError
from cnnlab.paths import RESULTS_FILE, config_dir, write_text
from cnnlab.runs.record import RunRecord, Status

SCALES = ("ci", "cpu", "device", "gpu")
EXPERIMENTS = Path(config_dir()) / "experiment" / "ablation"
DOC = Path("docs") / "ablations.md"
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_CONVERGED = (
    "reproduced",
    "not reproduced at this scale",
    "inconclusive",
    "inconclusive (not converged)",
)
# Worst first: a claim takes the first of these that any of its predictions got. A refutation on
# converged runs outranks one that training did not get far enough to judge.
SEVERITY = (NOT_REPRODUCED, NOT_CONVERGED, INCONCLUSIVE, REPRODUCED)
# Figures of the architecture and of inference, which do not depend on how far training got.
COST_METRICS = ("params", "macs", "time_s", "time_ratio")


def names() -> list[str]:
    """The claims, in the order of their numbers."""
    found = {p.stem: OmegaConf.load(p).ablation.number for p in EXPERIMENTS.glob("*.yaml")}
    return sorted(found, key=found.__getitem__)


def claim_config(name: str) -> DictConfig:
    """The composed cpu-scale config of claim ``name`` (its ``ablation`` section says the rest)."""

    if not (EXPERIMENTS / f"{name}.yaml").is_file():
        raise CnnlabError(
            f"No ablation named {name!r}. Known: {', '.join(names())} (or all); each is a file "
            f"in {EXPERIMENTS}."
        )
    return compose_config([f"experiment=ablation/{name}"])


def metric_value(run: Run, metric: str) -> float | None:
    """A run's figure: a results.json key, ``overfit_gap`` (training accuracy minus test
    accuracy) or ``<curve>@<epoch>`` (a logged curve's value at that epoch). The gap's training
    accuracy is the probe's (training images in inference mode after the last epoch, as the test
    images are evaluated) where the run has one: the last epoch's running accuracy is lowered by
    dropout and augmentation themselves, which would narrow a regulariser's gap by construction."""
    if metric == "overfit_gap":
        results = run.results
        train = results.get("final_train_eval_acc", results.get("final_train_acc"))
        test = results.get("test_acc")
        return None if train is None or test is None else float(train) - float(test)
    if "@" in metric:
        curve, epoch = metric.split("@")
        values = [v for e, v in run.curves.get(curve, []) if e == float(epoch)]
        return values[-1] if values else None
    value = run.results.get(metric)
    return None if value is None else float(value)


def summary(stat: Stat) -> str:
    if not stat.values:
        return "-"
    if len(stat.values) == 1:
        return _fmt(stat.mean)
    return f"{_fmt(stat.mean)} ± {_fmt(stat.std)}"


def _fmt(x: float) -> str:
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.1f}"


def converged(group: Group) -> int:
    """How many of the group's runs converged (a run without the record did not)."""
    return sum(r.results.get("converged") is True for r in group.runs)


def stat(group: Group, metric: str) -> Stat:
    values = [metric_value(r, metric) for r in group.runs]
    return Stat([v for v in values if v is not None])


def find_group(groups: list[Group], by: list[str], selector: dict[str, Any]) -> Group:
    unknown = [k for k in selector if k not in by]
    if unknown:
        raise CnnlabError(f"An expectation selects by {unknown}, not among ablation.by={by}.")
    want = {k: str(v) for k, v in selector.items()}
    for g in groups:
        if all(g.values[by.index(k)] == v for k, v in want.items()):
            return g
    raise MissingGroup(f"no completed run with {want}")


class MissingGroup(LookupError):
    pass


@dataclass
class Judgement:
    says: str
    verdict: str
    detail: str


def judge(expect: dict[str, Any], groups: list[Group], by: list[str]) -> Judgement:
    """One prediction of a claim, judged on the groups' means and their seed spread, and on
    whether their runs converged."""
    metric, says = expect["metric"], expect["says"]
    if "between" in expect:
        selectors = [expect["of"], expect["to"]]
    elif "similar" in expect:
        selectors = list(expect["similar"])
    elif "not_below" in expect:
        selectors = [expect["not_below"], expect["than"]]
    else:
        selectors = [expect["higher"], expect["lower"]]
    try:
        compared = [find_group(groups, by, s) for s in selectors]
    except MissingGroup as e:
        return Judgement(says, INCONCLUSIVE, str(e))
    judged = _judge(expect, metric, says, compared)
    counts = [(converged(g), len(g.runs)) for g in compared]
    if metric in COST_METRICS or all(done == n for done, n in counts):
        return judged
    told = " and ".join(f"{done}/{n}" for done, n in counts)
    return Judgement(says, NOT_CONVERGED, f"{judged.detail}; runs converged {told}")


def _judge(expect: dict[str, Any], metric: str, says: str, compared: list[Group]) -> Judgement:
    if "between" in expect:
        of, to = (stat(g, metric) for g in compared)
        ratio = of.mean / to.mean
        low, high = expect["between"]
        verdict = REPRODUCED if low <= ratio <= high else NOT_REPRODUCED
        return Judgement(says, verdict, f"{metric} ratio {ratio:.3g}, predicted {low:g}-{high:g}")
    a, b = (stat(g, metric) for g in compared)
    if not a.values or not b.values:
        return Judgement(says, INCONCLUSIVE, f"a group has no {metric}")
    diff, spread = a.mean - b.mean, max(a.std, b.std)
    detail = (
        f"{metric} {_fmt(a.mean)} vs {_fmt(b.mean)}: difference {diff:+.3g}, spread {spread:.2g}"
    )
    if max(len(a.values), len(b.values)) < 2:
        return Judgement(says, INCONCLUSIVE, detail + "; one seed, no spread to compare with")
    tolerance = max(spread, expect.get("within", 0.0))
    if "similar" in expect:
        return Judgement(says, REPRODUCED if abs(diff) <= tolerance else NOT_REPRODUCED, detail)
    if "not_below" in expect:
        return Judgement(says, REPRODUCED if diff >= -tolerance else NOT_REPRODUCED, detail)
    if abs(diff) <= spread:
        return Judgement(says, INCONCLUSIVE, detail)
    return Judgement(says, REPRODUCED if diff > 0 else NOT_REPRODUCED, detail)


def claim_verdict(judgements: list[Judgement]) -> str:
    """The worst verdict of a claim's predictions (:data:`SEVERITY`)."""
    found = {j.verdict for j in judgements}
    return next((v for v in SEVERITY if v in found), INCONCLUSIVE)


def ensemble_groups(report: dict[str, Any], members_converged: bool) -> list[Group]:
    """cnnlab-ensemble's settings as groups to judge (by ``setting``: single, single_tta,
    ensemble, ensemble_tta): a single model's accuracy per run, the ensemble's once; the
    times of every setting. Every setting's figures are those of the trained members, which
    count as converged when all of them did (``members_converged``)."""
    per_run = {"single": "test_acc", "single_tta": "test_acc_tta"}
    groups = []
    for s in report["settings"]:
        key = s["key"]
        times = {"time_s": s["time_s"], "time_ratio": s["time_ratio"]}
        accs = [r[per_run[key]] for r in report["runs"]] if key in per_run else [s["test_acc"]]
        runs = [
            Run(run_dir=f"{key}/{i}", status="completed", params={"setting": key},
                results={"test_acc": acc, **times, "converged": members_converged})
            for i, acc in enumerate(accs)
        ]  # fmt: skip
        groups.append(Group((key,), runs, accs))
    return groups


def table(groups: list[Group], by: list[str], metrics: list[str]) -> str:
    header = [*by, *metrics, "n", "converged", "params", "MACs"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(by) + "--:|" * (len(header) - len(by)),
    ]
    for g in groups:
        cells = [*g.values, *(summary(stat(g, m)) for m in metrics), str(len(g.runs))]
        cells += [f"{converged(g)}/{len(g.runs)}"]
        cells += [f"{g.first('params'):,}" if g.first("params") else "-"]
        cells += [f"{g.first('macs'):,}" if g.first("macs") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sweep(overrides: list[str], out: Path) -> int:
    """``cnnlab-train -m OVERRIDES`` with its sweep dir at ``out``; its exit status."""
    args = ["-m", *overrides, f"hydra.sweep.dir={out}"]
    print(f"cnnlab-train {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "cnnlab.cli.train", *args]).returncode


def pretrain_dir(overrides: list[str], out: Path) -> str:
    """The run dir of a claim's source run, trained once (a later call finds it and skips)."""
    if run_sweep(overrides, out):
        raise CnnlabError(f"The pretraining run failed: see {out}.")
    record = RunRecord.read(out / "0")
    if record is None:
        raise CnnlabError(f"The pretraining run left no {RESULTS_FILE} in {out / '0'}.")
    # A job skipped in its own dir keeps its record, whose same_as is unset.
    return str(record.same_as or record.continued_in or record.run_dir)


def describe(cfg: DictConfig, runs: list[Run], by: list[str]) -> str:
    """The scale of a sweep in words: data, images, epochs, seeds (the table has what it varies)."""
    data = cfg.data
    per_class = data.get("samples_per_class")
    size = f"{per_class} training images per class" if per_class else "the whole training set"
    if "data.samples_per_class" in by:
        size = "training images per class as in the table"
    budget = (
        f"{cfg.trainer.max_steps} steps"
        if cfg.trainer.get("max_steps", -1) not in (-1, None)
        else f"{cfg.trainer.max_epochs} epoch" + ("s" if cfg.trainer.max_epochs != 1 else "")
    )
    seeds = sorted({int(r.params.get("seed", -1)) for r in runs})
    choice = "data sets as in the table" if "data" in by else data._target_.rsplit(".", 1)[-1]
    return f"{choice}, {size}, {budget}, seeds {', '.join(map(str, seeds))}"


def training_minutes(runs: list[Run]) -> tuple[float, int]:
    """(minutes of training summed over ``runs``, the most jobs that shared the machine at a time,
    which divide it into wall time). A skipped job counts with the run it repeats (its results
    are that run's), so that a rerun which skips completed jobs reports the same time."""
    done = [r for r in runs if r.status in (Status.COMPLETED, Status.SKIPPED)]
    minutes = sum(r.results.get("wall_time_s", 0.0) for r in done) / 60
    return minutes, max((r.results.get("parallel_jobs", 1) for r in done), default=1)


def section(
    name: str, scale: str, cfg: DictConfig, runs: list[Run], doc: Path,
    report: dict[str, Any] | None, ci_size: bool = False,
) -> tuple[str, str]:  # fmt: skip
    """The Markdown section of one claim and its verdict; ``report``, cnnlab-ensemble's on the
    sweep's runs, is shown and judged when the claim asks for one. ``ci_size``: the runs were
    the scale's at the ci scale's sizes."""
    a = cfg.ablation
    by, metrics = list(a.by), list(a.metrics)
    # In the order of the sweep's jobs, as the experiment lists the values.
    order = {r.run_dir: i for i, r in enumerate(runs)}
    groups = sorted(group_runs(runs, by, metrics[0]), key=lambda g: order[g.runs[0].run_dir])
    failed = [r for r in runs if r.status not in (Status.COMPLETED, Status.SKIPPED)]
    judged, judged_by = groups, by
    if report:
        members = all(converged(g) == len(g.runs) for g in groups)
        judged, judged_by = ensemble_groups(report, members), ["setting"]
    judgements = [judge(OmegaConf.to_container(e), judged, judged_by) for e in a.expect]
    verdict = claim_verdict(judgements)
    curves = doc.parent / "ablations" / f"{name}_curves.png"
    curves.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(groups, by, curves)
    when = datetime.date.today().isoformat()
    minutes, jobs = training_minutes(runs)
    at_once = f" ({jobs} jobs at a time)" if jobs > 1 else ""
    lines = [
        f"## {a.number}. {a.title}",
        "",
        f"**Claim** ({a.source}): {a.claim}",
        "",
        *([f"**Paper:** {a.paper}", ""] if a.paper else []),
        f"**Measured** at `{scale}` scale{' (at the ci sizes)' if ci_size else ''} on {when}, "
        f"{machine()}, {minutes:.1f} min of training{at_once}: {describe(cfg, runs, by)}. "
        "Command: "
        f"`python scripts/reproduce.py {name} --scale {scale}{' --ci-size' if ci_size else ''}`.",
        "",
        table(groups, by, metrics),
        "",
        *([markdown(report), ""] if report else []),
        *(f"- {j.verdict}: {j.says} ({j.detail})" for j in judgements),
        *(f"- failed run: {r.run_dir}: {r.results.get('error', r.status)}" for r in failed),
        *not_converged(groups, by),
        "",
        f"**Verdict: {verdict}.**",
        "",
        *([a.note, ""] if a.get("note") else []),
        f"![{a.title}: mean ± std over seeds]({curves.relative_to(doc.parent)})",
    ]
    return "\n".join(lines), verdict


def not_converged(groups: list[Group], by: list[str]) -> list[str]:
    """One line per group with runs that did not converge: each run's seed and the rule's reason
    (results.json's ``convergence``), so that an inconclusive claim says why, measured."""
    lines = []
    for g in groups:
        reasons = [
            f"seed {r.params.get('seed', '?')}: "
            f"{(r.results.get('convergence') or {}).get('reason', 'no convergence record')}"
            for r in g.runs
            if r.results.get("converged") is not True
        ]
        if reasons:
            label = ", ".join(f"{k}={v}" for k, v in zip(by, g.values, strict=True)) or "all"
            lines.append(f"- not converged, {label}: {'; '.join(reasons)}")
    return lines


def machine() -> str:
    cores = os.cpu_count()
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cores}-core {platform.machine()} CPU{gpu}"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- ablation:{name}:start -->", f"<!-- ablation:{name}:end -->"


HEADER = """# Ablations: the source texts' claims, measured

Generated by `scripts/reproduce.py` (cnnlab.analysis.ablation): do not edit the sections by hand.
Each claim is a multirun experiment under `conf/experiment/ablation/`; `python scripts/reproduce.py
<name> --scale <scale>` reruns it (completed jobs are skipped) and rewrites its section. The method
(the verdicts, the convergence rule, the protocols and what differs from the papers) is that of
docs/ablations.md in cnnlab's repository. The text above the table of claims is kept when the page
is rewritten.
"""


SUMMARY_HEAD = "| # | claim | verdict |"


def write_doc(doc: Path, name: str, text: str, verdict: str, order: list[str]) -> None:
    """Replace claim ``name``'s section of the page ``doc`` (a new page starts from
    :data:`HEADER`) and its table of claims; keep the other sections and the text above the
    table, the page's method, which people write."""
    old = doc.read_text() if doc.is_file() else HEADER
    head = old.split(SUMMARY_HEAD, 1)[0] if SUMMARY_HEAD in old else old.split("<!-- ablation:")[0]
    blocks = {}
    for other in order:
        start, end = markers(other)
        if start in old:
            blocks[other] = old.split(start, 1)[1].split(end, 1)[0].strip("\n")
    blocks[name] = text + f"\n<!-- verdict: {verdict} -->"
    summary = [SUMMARY_HEAD, "|--:|---|---|"]
    for i, other in enumerate(order, 1):
        if other in blocks:
            title = blocks[other].splitlines()[0].split(". ", 1)[1]
            found = blocks[other].rsplit("<!-- verdict: ", 1)[1].split(" -->")[0]
            summary.append(f"| {i} | [{title}](#{anchor(blocks[other])}) | {found} |")
    body = [head.rstrip(), "", *summary, ""]
    for other in order:
        if other in blocks:
            start, end = markers(other)
            body += [start, blocks[other], end, ""]
    write_text(doc, "\n".join(body))


def anchor(block: str) -> str:
    """GitHub's anchor of a section's heading."""
    heading = block.splitlines()[0].lstrip("#").strip().lower()
    kept = "".join(c for c in heading if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def merge_overrides(*lists: list[str]) -> list[str]:
    """The overrides of ``lists`` in order, a key given again taking the later value in the
    earlier one's place, as Hydra's sweeper reads a sweep's parameters and command line."""
    merged: dict[str, str] = {}
    for override in (o for overrides in lists for o in overrides):
        merged[override.split("=", 1)[0].lstrip("+~")] = override
    return list(merged.values())


def scale_folder(scale: str, ci_size: bool) -> str:
    """Where a scale's sweeps and page go under <output root>/ablations."""
    return f"{scale}_ci" if ci_size and scale != "ci" else scale


def reproduce(
    name: str, scale: str, doc: Path, output_root: Path, sweep_dir: Path | None = None,
    ci_size: bool = False,
) -> str:  # fmt: skip
    """Run claim ``name`` at ``scale``, write its section into ``doc``; return its verdict.
    With ``sweep_dir``, judge the runs of that earlier sweep of the claim without running.
    ``ci_size``: the scale's settings (launcher, data sets, models) with the ci scale's sizes
    over them, which CI runs to check a scale it cannot afford."""
    cfg = claim_config(name)
    a = cfg.ablation
    if scale != "cpu" and scale not in a.scales:
        raise CnnlabError(
            f"Ablation {name} has no {scale!r} scale; it has cpu, {', '.join(a.scales)}."
        )
    # The experiment is the cpu scale; the others are overrides of it.
    sizes = [scale, "ci"] if ci_size else [scale]
    overrides = merge_overrides(*(a.scales.get(s, []) for s in sizes))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    code = 0
    if sweep_dir is None:
        sweep_dir = output_root / "ablations" / scale_folder(scale, ci_size) / name / stamp
        if a.pretrain:
            pretrain = merge_overrides(
                a.pretrain.overrides, *(a.pretrain.get("scales", {}).get(s, []) for s in sizes)
            )
            source = pretrain_dir(pretrain, sweep_dir.parent / "pretrain")
            overrides.append(f"transfer.init_from={source}")
        code = run_sweep([f"experiment=ablation/{name}", *overrides], sweep_dir)
    runs = load_local([sweep_dir]) if sweep_dir.is_dir() else []
    if not runs:
        raise CnnlabError(f"no run was written under {sweep_dir} (exit status {code}).")
    report = None
    if a.ensemble_tta:
        # One timed pass at ci sizes: those runs check the code, their times mean nothing, and
        # each pass predicts the whole test split ten times over.
        passes = 1 if "ci" in sizes else 3
        report = ensemble(completed_run_dirs([sweep_dir]), tta=a.ensemble_tta, repeats=passes)
    # The scale from the runs themselves; the claim and its predictions as they are now.
    job_cfg = OmegaConf.load(Path(runs[0].run_dir) / ".hydra" / "config.yaml")
    job_cfg.ablation = a
    text, verdict = section(name, scale, job_cfg, runs, doc, report, ci_size)
    write_doc(doc, name, text, verdict, names())
    print(f"[{name}] {verdict}; wrote {doc}", flush=True)
    if code != 0:
        raise CnnlabError(f"some jobs failed (exit status {code}): see {sweep_dir}.")
    return verdict
