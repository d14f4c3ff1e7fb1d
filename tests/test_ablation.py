"""The ablation runner: every claim's experiment composes at every scale, predictions are judged
against the seed spread, the page keeps the other claims' sections, and a real claim runs end to
end at ci scale (CI runs all of them with ``scripts/reproduce.py all --scale ci``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cnnlab.analysis import ablation
from cnnlab.analysis.compare import Group, Run
from cnnlab.config.compose import job_configs
from cnnlab.errors import CnnlabError
from cnnlab.training.convergence import WINDOW
from conftest import needs_fmnist, read_results

ROOT = Path(__file__).resolve().parents[1]


def test_twelve_claims_in_order():
    assert len(ablation.names()) == 12
    numbers = [ablation.claim_config(n).ablation.number for n in ablation.names()]
    assert numbers == list(range(1, 13))


def test_a_table_with_the_overfit_gap_shows_the_accuracy_it_is_taken_from():
    # The gap reads the probe's training accuracy (metric_value): the table shows it beside
    # the last epoch's running accuracy, or the gap would not be the difference of its columns.
    # The claims' own files, not their composed configs: milliseconds, not a second a claim.
    tables = [
        OmegaConf.load(ablation.EXPERIMENTS / f"{n}.yaml").ablation.metrics
        for n in ablation.names()
    ]
    with_gap = [list(metrics) for metrics in tables if "overfit_gap" in metrics]
    assert len(with_gap) == 3
    assert all("final_train_eval_acc" in metrics for metrics in with_gap)


@pytest.mark.parametrize("scale", ["device", "gpu"])
@pytest.mark.parametrize("name", ablation.names())
def test_claim_composes_at_the_scales_ci_does_not_run(name, scale, compose_cfg):
    """The device and gpu scales, which CI cannot afford, compose (CI runs the ci scale, and
    the device scale at the ci sizes for some claims: make ablations-ci)."""
    a = OmegaConf.load(ablation.EXPERIMENTS / f"{name}.yaml").ablation
    assert set(a.scales) == {"ci", "device", "gpu"}
    overrides = list(a.scales[scale])
    # Sweep lists (a,b) are the launcher's to expand; the rest must compose.
    single = [o for o in overrides if "," not in o.split("=", 1)[1] or "[" in o]
    cfg = compose_cfg([f"experiment=ablation/{name}", *single], hydra=True)
    if scale == "device":
        # One GPU's worth of jobs at once, on the data sets every machine here has.
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
        assert cfg.hydra.launcher.n_jobs >= 3
        assert cfg.data._target_.rsplit(".", 1)[-1] in ("FashionMNIST", "AnimalMNIST")
        assert not any(o.startswith(("data=", "trainer=")) for o in overrides)
        # At the ci sizes too, which make ablations-ci runs for some of the claims.
        at_ci = ablation.merge_overrides(single, a.scales.ci)
        at_ci = [o for o in at_ci if "," not in o.split("=", 1)[1] or "[" in o]
        small = compose_cfg([f"experiment=ablation/{name}", *at_ci], hydra=True)
        assert small.hydra.launcher.n_jobs == cfg.hydra.launcher.n_jobs
        assert_loss_settles_before_the_last_fifth(cfg)
    a = cfg.ablation
    for expect in a.expect:
        keys = ("higher", "lower", "of", "to", "not_below", "than")
        selectors = [expect[k] for k in keys if k in expect]
        selectors += list(expect.get("similar", []))
        # An ensemble claim is judged on cnnlab-ensemble's settings.
        by = ["setting"] if a.ensemble_tta else a.by
        assert selectors and all(set(s) <= set(by) for s in selectors), expect


def assert_loss_settles_before_the_last_fifth(cfg) -> None:
    """A step schedule's last decay comes at the first epoch the convergence rule reads (the one
    before the last fifth) or earlier: the probe after that epoch already measures the network
    trained at the final LR, while a decay inside the window would put the drop it causes into
    the fall the rule reads."""
    if not cfg.scheduler._target_.endswith("MultiStepLR") or cfg.scheduler.unit != "epoch":
        return
    epochs = cfg.trainer.max_epochs
    assert max(cfg.scheduler.milestones) <= epochs - epochs // WINDOW - 1, (
        cfg.scheduler.milestones, epochs,
    )  # fmt: skip


@pytest.mark.parametrize("name", ablation.names())
def test_cpu_scale_schedules_settle_before_the_last_fifth(name, compose_cfg):
    assert_loss_settles_before_the_last_fifth(compose_cfg([f"experiment=ablation/{name}"]))


def test_ci_sizes_replace_a_scales_own_for_the_same_key():
    device = ["hydra/launcher=joblib", "data.samples_per_class=null", "trainer.max_epochs=12"]
    ci = ["data.samples_per_class=5", "trainer.max_epochs=1", "seed=0"]
    assert ablation.merge_overrides(device, ci) == [
        "hydra/launcher=joblib", "data.samples_per_class=5", "trainer.max_epochs=1", "seed=0"
    ]  # fmt: skip
    assert ablation.merge_overrides(["+x=1"], ["x=2"]) == ["x=2"]
    assert ablation.scale_folder("device", ci_size=True) == "device_ci"
    assert ablation.scale_folder("ci", ci_size=True) == "ci"


@pytest.mark.parametrize("scale", ["cpu", "device", "gpu"])
def test_transfer_strategies_get_one_budget_of_optimizer_steps(scale, tmp_path, monkeypatch):
    """Every strategy and training-set size of the transfer claim trains for the same number of
    optimizer steps, enough for the new head to fit 20 images per class (a few hundred)."""
    monkeypatch.chdir(tmp_path)
    a = OmegaConf.load(ablation.EXPERIMENTS / "transfer_cases.yaml").ablation
    overrides = ["experiment=ablation/transfer_cases", *a.scales.get(scale, [])]
    # One data set and seed: the strategies and sizes are what the budget must not depend on.
    overrides = ablation.merge_overrides(overrides, ["data=fashion_mnist", "seed=0"])
    jobs = list(job_configs(overrides, multirun=True))
    HydraConfig.instance().cfg = None
    strategies = {(cfg.transfer.strategy.value, cfg.data.samples_per_class) for cfg in jobs}
    assert {s for s, _ in strategies} == {"feature_extract", "finetune"} and len(strategies) == 4
    budgets = {(cfg.trainer.max_steps, cfg.trainer.max_epochs) for cfg in jobs}
    [(steps, epochs)] = budgets
    assert steps >= 300 and epochs in (None, -1)
    # At cpu scale the smallest training set is one batch: its epoch loss is the training set's,
    # not a noisy sample of it that the convergence rule cannot read.
    if scale == "cpu":
        small = [cfg for cfg in jobs if cfg.data.samples_per_class == 20]
        assert all(c.data.batch_size >= 20 * len(c.data.classes) for c in small)
    # The head's training accuracy is in the table.
    assert "final_train_acc" in a.metrics


def _group(value: str, scores: list[float], macs: int = 100, converged: int | None = None) -> Group:
    """Runs of ``scores``, the first ``converged`` of them (all by default) converged."""
    done = len(scores) if converged is None else converged
    runs = [
        Run(run_dir=f"{value}/{i}", status="completed", params={"m": value},
            results={"test_acc": s, "macs": macs, "converged": i < done})
        for i, s in enumerate(scores)
    ]  # fmt: skip
    return Group((value,), runs, scores)


def test_judge_against_the_seed_spread():
    groups = [
        _group("a", [0.90, 0.91, 0.92]),
        _group("b", [0.80, 0.81, 0.79], macs=400),
        _group("c", [0.905, 0.95, 0.86]),
    ]
    higher = {"says": "a beats b", "metric": "test_acc", "higher": {"m": "a"}, "lower": {"m": "b"}}
    assert ablation.judge(higher, groups, ["m"]).verdict == ablation.REPRODUCED
    reverse = {**higher, "higher": {"m": "b"}, "lower": {"m": "a"}}
    assert ablation.judge(reverse, groups, ["m"]).verdict == ablation.NOT_REPRODUCED
    # a - c = 0.005 is inside c's standard deviation (0.045).
    within = {**higher, "lower": {"m": "c"}}
    assert ablation.judge(within, groups, ["m"]).verdict == ablation.INCONCLUSIVE
    similar = {"says": "a like c", "metric": "test_acc", "similar": [{"m": "a"}, {"m": "c"}]}
    assert ablation.judge(similar, groups, ["m"]).verdict == ablation.REPRODUCED
    apart = {**similar, "similar": [{"m": "a"}, {"m": "b"}], "within": 0.01}
    assert ablation.judge(apart, groups, ["m"]).verdict == ablation.NOT_REPRODUCED
    # a is above b: not below it; c is 0.005 below a, within its spread.
    not_below = {"says": "a no worse", "metric": "test_acc", "not_below": {"m": "a"}}
    assert ablation.judge({**not_below, "than": {"m": "b"}}, groups, ["m"]).verdict == "reproduced"
    assert ablation.judge({**not_below, "than": {"m": "c"}}, groups, ["m"]).verdict == "reproduced"
    below = {**not_below, "not_below": {"m": "b"}, "than": {"m": "a"}, "within": 0.01}
    assert ablation.judge(below, groups, ["m"]).verdict == ablation.NOT_REPRODUCED
    ratio = {"says": "b costs 4x", "metric": "macs", "of": {"m": "b"}, "to": {"m": "a"}}
    assert ablation.judge({**ratio, "between": [3, 5]}, groups, ["m"]).verdict == "reproduced"
    assert ablation.judge({**ratio, "between": [1, 2]}, groups, ["m"]).verdict.startswith("not")
    missing = {**higher, "higher": {"m": "z"}}
    judged = ablation.judge(missing, groups, ["m"])
    assert judged.verdict == ablation.INCONCLUSIVE and "no completed run" in judged.detail
    one_seed = [_group("a", [0.9]), _group("b", [0.1])]
    assert ablation.judge(higher, one_seed, ["m"]).verdict == ablation.INCONCLUSIVE


def test_judge_edge_cases():
    groups = [_group("a", [0.90, 0.92]), _group("b", [0.80, 0.82], macs=300)]
    # A ratio on a bound is within it.
    ratio = {"says": "b costs 3x", "metric": "macs", "of": {"m": "b"}, "to": {"m": "a"}}
    assert ablation.judge({**ratio, "between": [3, 3]}, groups, ["m"]).verdict == "reproduced"
    # A group whose runs lack the metric cannot be judged.
    higher = {"says": "a beats b", "metric": "test_acc_tta", "higher": {"m": "a"}}
    judged = ablation.judge({**higher, "lower": {"m": "b"}}, groups, ["m"])
    assert judged.verdict == ablation.INCONCLUSIVE
    assert "a group has no test_acc_tta" in judged.detail
    # An explicit tolerance wider than the spread makes a 0.1 gap "similar".
    similar = {"says": "a like b", "metric": "test_acc", "similar": [{"m": "a"}, {"m": "b"}]}
    assert ablation.judge(similar, groups, ["m"]).verdict == ablation.NOT_REPRODUCED
    assert ablation.judge({**similar, "within": 0.11}, groups, ["m"]).verdict == "reproduced"
    # A selector outside the claim's grouping is a mistake in the claim, not a missing group.
    with pytest.raises(CnnlabError, match="not among ablation.by"):
        ablation.judge({**higher, "metric": "test_acc", "lower": {"x": "b"}}, groups, ["m"])
    # The worst verdict first: a claim with one refuted prediction is not reproduced.
    assert ablation.SEVERITY[0] == ablation.NOT_REPRODUCED


def test_a_prediction_on_runs_that_did_not_converge_is_inconclusive():
    """However clear the difference, a trained figure of runs that did not all converge judges
    under-training, not the claim; the costs (params, MACs, times) are judged all the same."""
    higher = {"says": "a beats b", "metric": "test_acc", "higher": {"m": "a"}, "lower": {"m": "b"}}
    groups = [_group("a", [0.90, 0.91, 0.92], converged=2), _group("b", [0.1, 0.11, 0.12], 400)]
    judged = ablation.judge(higher, groups, ["m"])
    assert judged.verdict == ablation.NOT_CONVERGED == "inconclusive (not converged)"
    assert judged.detail.endswith("difference +0.8, spread 0.01; runs converged 2/3 and 3/3")
    # Refuted figures on unconverged runs are not a refutation either.
    reverse = {**higher, "higher": {"m": "b"}, "lower": {"m": "a"}}
    assert ablation.judge(reverse, groups, ["m"]).verdict == ablation.NOT_CONVERGED
    ratio = {"says": "b costs 4x", "metric": "macs", "of": {"m": "b"}, "to": {"m": "a"}}
    assert ablation.judge({**ratio, "between": [3, 5]}, groups, ["m"]).verdict == "reproduced"
    # A run without the record (an older cnnlab's) did not converge.
    del groups[1].runs[0].results["converged"]
    assert ablation.converged(groups[1]) == 2
    # Every run converged: judged on the figures.
    done = [_group("a", [0.90, 0.91, 0.92]), _group("b", [0.1, 0.11, 0.12])]
    assert ablation.judge(higher, done, ["m"]).verdict == ablation.REPRODUCED


def test_a_claim_takes_its_worst_verdict():
    def verdict(*found):
        return ablation.claim_verdict([ablation.Judgement("x", v, "") for v in found])

    ok, refuted, unsure, unconverged = (
        ablation.REPRODUCED, ablation.NOT_REPRODUCED, ablation.INCONCLUSIVE, ablation.NOT_CONVERGED
    )  # fmt: skip
    assert verdict(ok, unconverged) == unconverged == verdict(unsure, unconverged)
    assert verdict(ok, ok) == ok
    # A refutation on converged runs outranks a prediction training did not get far enough for.
    assert verdict(unconverged, refuted, ok) == refuted
    assert verdict() == unsure


def test_ensemble_settings_are_judged_on_whether_the_members_converged():
    report = {
        "runs": [
            {"test_acc": 0.80, "test_acc_tta": 0.82},
            {"test_acc": 0.81, "test_acc_tta": 0.83},
        ],
        "settings": [
            {"key": "single", "test_acc": 0.805, "time_s": 1.0, "time_ratio": 1.0},
            {"key": "single_tta", "test_acc": 0.825, "time_s": 10.0, "time_ratio": 10.0},
            {"key": "ensemble", "test_acc": 0.9, "time_s": 2.0, "time_ratio": 2.0},
        ],
    }
    better = {"says": "e", "metric": "test_acc", "higher": {"setting": "ensemble"}}
    better["lower"] = {"setting": "single"}
    slower = {"says": "t", "metric": "time_s", "of": {"setting": "single_tta"}}
    slower |= {"to": {"setting": "single"}, "between": [3, 15]}
    for members, expected in ((True, ablation.REPRODUCED), (False, ablation.NOT_CONVERGED)):
        groups = ablation.ensemble_groups(report, members)
        assert ablation.judge(better, groups, ["setting"]).verdict == expected
        assert ablation.judge(slower, groups, ["setting"]).verdict == ablation.REPRODUCED


def test_the_table_counts_converged_runs_per_group():
    groups = [_group("a", [0.90, 0.91, 0.92], converged=1), _group("b", [0.1, 0.2])]
    text = ablation.table(groups, ["m"], ["test_acc"])
    header, _, row_a, row_b = text.splitlines()
    assert header == "| m | test_acc | n | converged | params | MACs |"
    assert row_a.split(" | ")[2:4] == ["3", "1/3"] and row_b.split(" | ")[2:4] == ["2", "2/2"]


def test_the_page_names_each_run_not_converged_and_the_rules_reason():
    """An inconclusive (not converged) claim says why, measured: the seed and results.json's
    reason of every run that did not converge, one line per group."""
    reason = "the loss fell 4.31% (noise 1.10%) over the last 3 of 16 epochs, not less than 2.00%"
    runs = [
        Run(run_dir=f"a/{i}", status="completed", params={"m": "a", "seed": i},
            results={"test_acc": 0.9, "converged": i != 1,
                     "convergence": {"reason": reason if i == 1 else "reached the ceiling"}})
        for i in range(3)
    ]  # fmt: skip
    done = Group(("b",), [Run("b/0", "completed", {"m": "b", "seed": 0}, {"converged": True})], [])
    lines = ablation.not_converged([Group(("a",), runs, []), done], ["m"])
    assert lines == [f"- not converged, m=a: seed 1: {reason}"]


def test_page_keeps_other_sections(tmp_path):
    doc = tmp_path / "ablations.md"
    order = ["first", "second"]
    ablation.write_doc(doc, "second", "## 2. Second claim\n\nbody two", "reproduced", order)
    ablation.write_doc(doc, "first", "## 1. First claim\n\nbody one", "inconclusive", order)
    ablation.write_doc(doc, "second", "## 2. Second claim\n\nnew body", "not reproduced", order)
    text = doc.read_text()
    assert "body one" in text and "new body" in text and "body two" not in text
    assert text.index("First claim") < text.index("new body")
    assert "| 1 | [First claim](#1-first-claim) | inconclusive |" in text
    assert "| 2 | [Second claim](#2-second-claim) | not reproduced |" in text
    assert text.startswith(ablation.HEADER.rstrip())
    # The method above the table of claims is the people's: a rewrite keeps it.
    doc.write_text(text.replace("do not edit", "METHOD: the convergence rule.\n\ndo not edit"))
    ablation.write_doc(doc, "first", "## 1. First claim\n\nbody 1b", "inconclusive", order)
    text = doc.read_text()
    assert "METHOD: the convergence rule." in text and "body 1b" in text and "new body" in text
    assert text.count(ablation.SUMMARY_HEAD) == 1


@needs_fmnist
@pytest.mark.heavy  # CI runs every claim at ci scale after make test (make ablations-ci)
def test_claim_runs_end_to_end_at_ci_scale(tmp_path):
    doc = tmp_path / "doc.md"
    args = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "squeeze_excitation"]
    args += ["--scale", "ci", "--doc", str(doc)]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = doc.read_text()
    assert "## 3. Squeeze-and-excitation" in text and "at `ci` scale" in text
    rows = [line for line in text.splitlines() if line.startswith(("| None ", "| 4 "))]
    assert len(rows) == 2
    # The SE blocks' cost, measured: a ratio of MACs within the claim's bound.
    assert "reproduced: SE blocks add at most 2% to the multiply-accumulates" in text
    assert (tmp_path / "ablations" / "squeeze_excitation_curves.png").stat().st_size > 0
    [sweep] = (tmp_path / "outputs" / "ablations" / "ci" / "squeeze_excitation").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [read_results(j)["status"] for j in jobs] == ["completed", "completed"]


def test_the_overfit_gap_reads_the_training_images_in_inference_mode_where_probed():
    # Dropout lowers the running accuracy of the last epoch (0.90) below the fit of the same
    # images in inference mode (0.99): the gap is that of the fit, as the test set's is.
    probed = {"final_train_acc": 0.90, "final_train_eval_acc": 0.99, "test_acc": 0.85}
    run = Run(run_dir="r", status="completed", params={}, results=probed)
    assert ablation.metric_value(run, "overfit_gap") == pytest.approx(0.14)
    unprobed = {"final_train_acc": 0.90, "test_acc": 0.85}  # a run from before the probe
    run = Run(run_dir="r", status="completed", params={}, results=unprobed)
    assert ablation.metric_value(run, "overfit_gap") == pytest.approx(0.05)


def test_a_rerun_that_skips_completed_jobs_reports_their_training_minutes():
    trained = {"wall_time_s": 120.0, "parallel_jobs": 2}
    runs = [
        Run(run_dir="a/0", status="completed", params={}, results=trained),
        # A skipped job carries the results of the run it repeats (cnnlab.analysis.compare).
        Run(run_dir="a/1", status="skipped", params={}, results={**trained, "same_as": "x/1"}),
        Run(run_dir="a/2", status="failed", params={}, results={"wall_time_s": 60.0}),
    ]
    assert ablation.training_minutes(runs) == (4.0, 2)
