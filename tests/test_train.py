"""End-to-end training through the real command line on real Fashion-MNIST data."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest

from conftest import needs_fmnist, read_results, run_cli, run_dirs, wandb_sync_dry_run

RESULT_KEYS = {"test_acc", "best_val_acc", "epochs", "wall_time_s", "params", "status", "run_dir"}


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@needs_fmnist
@pytest.mark.slow
def test_short_training_learns_fashion_mnist(tmp_path):
    """~250 SGD steps on 3,000 real training images: far above the 10% of chance."""
    proc = run_cli(
        [
            "name=learns",
            "data.samples_per_class=300",
            "data.batch_size=100",
            "data.val_size=1000",
            "trainer.max_epochs=8",
            "optimizer.lr=0.05",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = run_dirs(tmp_path)
    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert results["epochs"] == 8
    assert results["test_acc"] >= 0.70, results
    assert results["best_val_acc"] >= 0.70, results
    # Per-class accuracy and the confusion matrix of the test set come with the class names.
    assert set(results["per_class_acc"]) >= {"Trouser", "Ankle boot"}
    assert sum(map(sum, results["confusion_matrix"])) == 10_000
    # Checkpoints: last.ckpt and the best one by validation accuracy; CSV metrics per epoch.
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "val_acc" in metrics.splitlines()[0] and "train_loss_epoch" in metrics
    # The convergence rule reads 512 of the training images in inference mode after the epochs
    # it judges, the last fifth and the one before (their figures are in the metrics too),
    # beside the epoch's running figures.
    rows = list(csv.DictReader(io.StringIO(metrics)))
    assert {int(r["epoch"]) for r in rows if r.get("train_eval_acc")} == {6, 7}
    assert results["convergence"]["measured_on"] == "inference-mode, 512 training images"
    assert results["convergence"]["last_train_acc"] == results["final_train_eval_acc"] >= 0.7
    assert results["final_train_eval_loss"] > 0 and results["final_train_acc"] >= 0.7


@needs_fmnist
@pytest.mark.heavy  # 27 s; a fault-matrix row, run by make test-faults
def test_fast_dev_run_then_a_failed_run_leaves_the_first_untouched(tmp_path):
    """A fast dev run of the default experiment writes a complete run dir; a failed run with the
    same name is recorded beside it without touching it. One test: both need the first run."""
    first = run_cli(["debug=fdr", "name=same"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    [earlier] = run_dirs(tmp_path)
    results = read_results(earlier)
    assert results.keys() >= RESULT_KEYS
    assert results["status"] == "completed"
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results["params"] > 10_000
    assert results["run_dir"] == str(earlier)
    assert (earlier / ".hydra" / "config.yaml").is_file()
    assert "run_dir" in first.stdout and "test_acc" in first.stdout
    # Lightning's messages once (Hydra's console handler), not again from Lightning's own.
    assert (first.stdout + first.stderr).count("GPU available") == 1
    assert "GPU available" in (earlier / "train.log").read_text()
    before = _digest(earlier)

    failed = run_cli(["debug=fdr", "name=same", "trainer.accelerator=gpuu"], cwd=tmp_path)
    assert failed.returncode == 2
    assert "trainer.accelerator=gpuu" in failed.stderr and "cpu" in failed.stderr
    assert "Traceback" not in failed.stderr
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2
    [new] = [d for d in dirs if d != earlier]
    results = read_results(new)
    assert results["status"] == "failed" and "gpuu" in results["error"]
    assert _digest(earlier) == before

    # Pointing a run at an existing run dir is refused before anything is written.
    again = run_cli(["debug=fdr", f"hydra.run.dir={earlier}"], cwd=tmp_path)
    assert again.returncode == 2 and "never writes over" in again.stderr
    assert json.loads((earlier / "results.json").read_text())["status"] == "completed"


@needs_fmnist
def test_many_loggers_write_csv_tensorboard_and_offline_wandb(tmp_path):
    env = {"WANDB_API_KEY": None, "WANDB_MODE": None, "NETRC": str(tmp_path / "no-netrc")}
    # LeNet-5 on 100 images: what is tested is the loggers' files, not the training.
    tiny = ["model=lenet5", "data.samples_per_class=10", "data.val_size=100", "data.batch_size=50"]
    tiny += ["trainer.max_epochs=1", "trainer.limit_test_batches=1", "logger=many"]
    proc = run_cli(tiny, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = run_dirs(tmp_path)
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, list(run_dir.rglob("*"))
    assert read_results(run_dir)["status"] == "completed"
    # The README's upload command for a single run finds it, and only it.
    found = wandb_sync_dry_run(tmp_path, "outputs/*/*/wandb/offline-run-*")
    assert "Would sync 1 run(s)" in found and offline_runs[0].name in found, found


@needs_fmnist
@pytest.mark.heavy  # 50 s; resuming is in make test through tests/test_resume.py
def test_resume_continues_from_a_checkpoint_in_a_new_run_dir(tmp_path):
    """A cosine schedule follows the resumed config's length; a resume that the checkpoint's
    scheduler state cannot follow is refused with a clear message."""
    short = ["debug=limit", "trainer.max_epochs=1"]
    first = run_cli([*short, "name=first", "scheduler=cosine"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    [earlier] = run_dirs(tmp_path)
    before = _digest(earlier)
    last = earlier / "checkpoints" / "last.ckpt"

    longer = ["debug=limit", "trainer.max_epochs=2", "name=resumed", f"ckpt_path={last}"]
    resumed = run_cli([*longer, "scheduler=cosine"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr
    [new] = [d for d in run_dirs(tmp_path) if d != earlier]
    results = read_results(new)
    assert results["status"] == "completed" and results["epochs"] == 2
    metrics = (new / "csv" / "metrics.csv").read_text().splitlines()
    epochs = {row.split(",")[metrics[0].split(",").index("epoch")] for row in metrics[1:]}
    assert "0" not in epochs and "1" in epochs  # only the second epoch was trained here
    assert _digest(earlier) == before

    other_kind = run_cli([*longer, "scheduler=onecycle"], cwd=tmp_path)
    assert other_kind.returncode == 2, other_kind.stdout + other_kind.stderr
    assert "trained with scheduler._target_=torch.optim.lr_scheduler.CosineAnnealingLR" in (
        other_kind.stderr
    )

    missing = run_cli(["debug=fdr", f"ckpt_path={tmp_path / 'nope.ckpt'}"], cwd=tmp_path)
    assert missing.returncode == 2 and "nope.ckpt" in missing.stderr


@needs_fmnist
@pytest.mark.heavy  # two more process starts; refusing another scheduler kind stays in make test
def test_resume_refuses_a_one_cycle_schedule_of_another_length(tmp_path):
    first = run_cli(["debug=limit", "trainer.max_epochs=1", "name=onecycle"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    [run_dir] = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    longer = run_cli(["debug=limit", "trainer.max_epochs=2", f"ckpt_path={last}"], cwd=tmp_path)
    assert longer.returncode == 2, longer.stdout + longer.stderr
    assert "one-cycle schedule spans 10 steps" in longer.stderr
    assert "Traceback" not in longer.stderr
