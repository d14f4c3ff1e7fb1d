"""cnnlab-ensemble on real runs: two seeds of LeNet-5 on two Fashion-MNIST classes, and two runs
on three classes that cannot join them."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from cnnlab.analysis import ensemble
from cnnlab.augment.tta import views
from cnnlab.cli import ensemble as ensemble_cli
from cnnlab.inference import loading
from conftest import needs_fmnist, read_results, run_cli, run_dirs

# One epoch of LeNet-5 (ReLU and max pooling: quicker on a CPU than the paper's) on 100 or 150
# training images; 2000 or 3000 test images.
TINY = [
    "model=lenet5_modern",
    "data.samples_per_class=50",
    "data.val_size=100",
    "data.batch_size=50",
    "trainer.max_epochs=1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[int, int], Path]:
    """(number of classes, seed) -> run dir, from one multirun of four jobs."""
    cwd = tmp_path_factory.mktemp("ensemble")
    proc = run_cli(["-m", *TINY, "data.classes=[0,1],[0,1,2]", "seed=0,1"], cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = {}
    for d in run_dirs(cwd):
        assert read_results(d)["status"] == "completed"
        data = loading.load(d).config.data
        found[(data.num_classes, data.seed)] = d
    assert set(found) == {(2, 0), (2, 1), (3, 0), (3, 1)}
    return found


def softmax_probs(trained: loading.Trained, images: torch.Tensor, tta: str) -> torch.Tensor:
    """Probabilities computed here, apart from cnnlab.analysis.ensemble: softmax of each view,
    averaged."""
    with torch.no_grad():
        x = trained.inputs(images)
        return torch.stack([trained.module(v).softmax(-1) for v in views(x, tta)]).mean(0)


@needs_fmnist
def test_ensemble_averages_the_runs_probabilities_and_ten_crops_cost_more(runs):
    dirs = [runs[(2, 0)], runs[(2, 1)]]
    report = ensemble.ensemble(dirs, tta="ten_crop", repeats=1)

    members = [loading.load(d) for d in dirs]
    datamodule = loading.load_test_split(members[0].config)
    correct = {"single": [0, 0], "single_tta": [0, 0], "ensemble": 0, "ensemble_tta": 0}
    for images, labels in datamodule.test_dataloader():
        for key, tta in (("single", "none"), ("single_tta", "ten_crop")):
            probs = [softmax_probs(m, images, tta) for m in members]
            mean = torch.stack(probs).mean(0)
            _, ensemble_mean, seconds = ensemble.predict(members, images, tta)
            assert torch.allclose(ensemble_mean, mean, atol=1e-6)
            assert len(seconds) == 3 and all(s > 0 for s in seconds)
            for i, p in enumerate(probs):
                correct[key][i] += int((p.argmax(1) == labels).sum())
            correct[key.replace("single", "ensemble")] += int((mean.argmax(1) == labels).sum())

    n = len(datamodule.test_set)
    assert report["test_images"] == n == 2000
    settings = {s["key"]: s for s in report["settings"]}
    for key, per_run in (("single", "test_acc"), ("single_tta", "test_acc_tta")):
        accs = [c / n for c in correct[key]]
        assert settings[key]["test_acc"] == pytest.approx(statistics.fmean(accs))
        assert settings[key]["test_acc_std"] == pytest.approx(statistics.stdev(accs))
        assert [r[per_run] for r in report["runs"]] == pytest.approx(accs)
    for key in ("ensemble", "ensemble_tta"):
        assert settings[key]["test_acc"] == pytest.approx(correct[key] / n)
    # The tested checkpoint is the one the run's own test_acc came from.
    for run, d in zip(report["runs"], dirs, strict=True):
        assert run["test_acc"] == pytest.approx(read_results(d)["test_acc"], abs=1e-6)

    assert [(s["models"], s["views"]) for s in report["settings"]] == [
        (1, 1),
        (1, 10),
        (2, 1),
        (2, 10),
    ]
    assert settings["single"]["time_ratio"] == 1.0
    assert settings["single_tta"]["time_s"] > settings["single"]["time_s"]
    assert settings["ensemble"]["time_s"] > settings["single"]["time_s"]
    assert settings["ensemble_tta"]["time_s"] > settings["single_tta"]["time_s"]


@needs_fmnist
def test_cli_writes_json_and_table_and_counts_a_skipped_run_as_the_one_it_repeats(
    runs, tmp_path, capsys
):
    # A later sweep's job that was skipped because it repeats the seed-1 run.
    later = tmp_path / "later" / "0"
    shutil.copytree(runs[(2, 1)] / ".hydra", later / ".hydra")
    skipped = {"status": "skipped", "same_as": str(runs[(2, 1)])}
    (later / "results.json").write_text(json.dumps(skipped))

    out = tmp_path / "report"
    argv = [str(runs[(2, 0)]), str(later.parent), "--tta", "hflip", "--repeats", "2"]
    assert ensemble_cli.main([*argv, "--out", str(out), "--batch-size", "500"]) == 0
    printed = capsys.readouterr().out
    table = (out / "ensemble.md").read_text()
    assert table in printed
    assert "| single model + hflip |" in table and "| ensemble of 2 + hflip |" in table
    report = json.loads((out / "ensemble.json").read_text())
    assert [r["run_dir"] for r in report["runs"]] == [str(runs[(2, 0)]), str(runs[(2, 1)])]
    assert report["tta"] == "hflip" and report["batch_size"] == 500 and report["repeats"] == 2
    for s in report["settings"]:
        assert len(s["time_s_passes"]) == 2
        assert s["time_s"] == statistics.median(s["time_s_passes"])
        assert f"| {s['setting']} | {s['test_acc']:.4f}" in table


@needs_fmnist
def test_runs_of_other_classes_and_missing_paths_fail_with_a_clear_error(runs, tmp_path, capsys):
    assert ensemble_cli.main([str(runs[(2, 0)]), str(runs[(3, 1)])]) == 2
    err = capsys.readouterr().err
    assert "cannot be ensembled" in err and "predicts 2 classes" in err
    assert "data.classes ([0, 1] vs [0, 1, 2])" in err and "data.num_classes (2 vs 3)" in err
    assert "data.seed (0 vs 1)" in err and "their seeds, models" in err
    assert not (runs[(2, 0)] / "ensemble").exists()

    assert ensemble_cli.main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert ensemble_cli.main([str(tmp_path)]) == 2
    assert "holds no cnnlab run" in capsys.readouterr().err
