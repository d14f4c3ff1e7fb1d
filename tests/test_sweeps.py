"""Sweeps through the real command line: multirun, failure isolation, parallel jobs, W&B offline
runs, Optuna, and cnnlab-compare on the run dirs they leave."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
from collections import defaultdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnnlab.cli import compare
from conftest import needs_fmnist, read_results, run_cli, run_dirs, wandb_sync_dry_run

# Two epochs of two steps of LeNet-5 on 100 training images, tested on 200 images.
TINY = [
    "model=lenet5",
    "data.samples_per_class=10",
    "data.val_size=100",
    "data.batch_size=50",
    "data.eval_batch_size=200",
    "trainer.max_epochs=2",
    "trainer.limit_test_batches=1",
]
OFFLINE = {"WANDB_API_KEY": None, "WANDB_MODE": None}


def sweep_dir(cwd: Path) -> Path:
    [path] = (cwd / "outputs" / "multirun").glob("*/*")
    return path


def ran_at(run_dir: Path) -> tuple[float, float]:
    """(start, end) of a run: results.json is rewritten when it ends, wall_time_s after it began."""
    end = (run_dir / "results.json").stat().st_mtime
    return end - read_results(run_dir)["wall_time_s"], end


def wandb_records(run_dir: Path) -> dict[str, list]:
    """The records of a run's offline W&B log (run-<id>.wandb), parsed with the wandb package's
    own protobuf schema, by type: run, config, history, summary, exit..."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block = path.read_bytes(), 32768
    pos, pending, records = 7, b"", defaultdict(list)  # 7: W&B's own file header
    # LevelDB log framing: 32 KiB blocks of (crc32, length, type) chunks.
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records[record.WhichOneof("record_type")].append(record)
            pending = b""
    return records


def wandb_items(records: list, field: str) -> dict:
    """key -> value of the config, summary or history items (nested keys joined with '.')."""
    items = {}
    for record in records:
        for item in getattr(getattr(record, field), "update" if field != "history" else "item"):
            key = ".".join([item.key, *item.nested_key] if item.key else item.nested_key)
            items[key] = json.loads(item.value_json)
    return items


@needs_fmnist
@pytest.mark.slow
def test_multirun_of_3x2_jobs_compares_as_3_groups_of_2_seeds(tmp_path, capsys):
    proc = run_cli(["-m", *TINY, "scheduler=none,cosine,step", "seed=0,1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 6
    assert all(read_results(d)["status"] == "completed" for d in dirs)
    assert "sweep: 6 completed" in proc.stdout
    sweep = sweep_dir(tmp_path)
    assert json.loads((sweep / "summary.json").read_text())["counts"]["completed"] == 6

    expected = defaultdict(list)
    for d in dirs:
        results = read_results(d)
        assert results["macs"] > 100_000 and results["params"] == 60_000
        choice = OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra.runtime.choices.scheduler
        expected[choice].append(results["test_acc"])

    assert compare.main([str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "| scheduler | test_acc (mean ± std) | n |" in table
    out = sweep / "comparison"
    rows = (out / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("scheduler,test_acc,std,n,params,MACs")
    groups = {row.split(",")[0]: row.split(",") for row in rows[1:]}
    assert set(groups) == {"none", "cosine", "step"}
    for choice, scores in expected.items():
        _, mean, std, n, *_ = groups[choice]
        assert int(n) == 2
        assert float(mean) == statistics.fmean(scores)
        assert float(std) == statistics.stdev(scores)
    for png in ("curves.png", "test_acc_by_param.png", "test_acc_vs_macs.png"):
        assert (out / png).stat().st_size > 10_000

    # A later sweep that skipped a job (it repeats job 0) and lost another: the skipped one
    # counts with the metrics of the run it repeats, the failed one is listed, not aggregated.
    later = tmp_path / "later"
    for i, (status, extra) in enumerate(
        (("skipped", {"same_as": str(dirs[0])}), ("failed", {"error": "RuntimeError: boom"}))
    ):
        shutil.copytree(dirs[i] / ".hydra", later / str(i) / ".hydra")
        (later / str(i) / "results.json").write_text(json.dumps({"status": status, **extra}))
    assert compare.main([str(later), "--by", "scheduler,seed"]) == 0
    table = capsys.readouterr().out
    first = read_results(dirs[0])
    assert f"{first['test_acc']:.4f} ± 0.0000 | 1 |" in table
    assert "failed: " in table and "RuntimeError: boom" in table

    assert compare.main([str(sweep), "--by", "optimizer.lrr"]) == 2
    assert "optimizer.lrr" in capsys.readouterr().err


@needs_fmnist
@pytest.mark.heavy  # 24 s; a fault-matrix row, run by make test-faults
def test_parallel_sweep_isolates_a_failed_job_and_logs_to_wandb_offline(tmp_path):
    """Two jobs at once with the joblib launcher, each with half the cores; one fails (3 output
    classes for 10 labels) and the other completes; both log to W&B offline."""
    proc = run_cli(
        [
            "-m",
            *TINY,
            "scheduler=cosine",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "model.num_classes=10,3",
            "logger=[csv,wandb]",
        ],
        cwd=tmp_path,
        env={**OFFLINE, "NETRC": str(tmp_path / "no-netrc")},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 of 2 jobs of the sweep did not complete" in proc.stderr
    assert "sweep: 1 completed, 1 failed" in proc.stdout
    good, bad = (sweep_dir(tmp_path) / str(i) for i in (0, 1))
    failed = read_results(bad)
    assert failed["status"] == "failed" and "out of bounds" in failed["error"], failed
    assert "Traceback" in (bad / "train.log").read_text()
    completed = read_results(good)
    assert completed["status"] == "completed" and 0 <= completed["test_acc"] <= 1

    threads = max(1, (os.cpu_count() or 1) // 2)
    for results in (completed, failed):
        assert results["parallel_jobs"] == 2 and results["torch_threads"] == threads
    (start_a, end_a), (start_b, end_b) = ran_at(good), ran_at(bad)
    assert start_a < end_b and start_b < end_a, "the two jobs did not run at the same time"

    records = wandb_records(good)
    [run] = records["run"]
    assert run.run.run_group == sweep_dir(tmp_path).name
    assert run.run.display_name.startswith("lenet5-fashion_mnist[")
    assert "model.num_classes=10" in run.run.display_name
    assert {"lenet5", "fashion_mnist"} <= set(run.run.tags)
    config = wandb_items(records["config"], "config")  # the resolved config, nested
    assert config["choices"]["model"] == "lenet5" and config["choices"]["scheduler"] == "cosine"
    assert config["optimizer"]["lr"] == 0.1 and config["data"]["batch_size"] == 50
    assert config["model_summary"] == {"params": 60_000, "macs": completed["macs"]}
    history = wandb_items(records["history"], "history")
    assert "val_acc" in history and "train_loss_epoch" in history
    summary = wandb_items(records["summary"], "summary")
    assert summary["test_acc"] == completed["test_acc"]
    assert summary["test_acc_class/Trouser"] == completed["per_class_acc"]["Trouser"]
    assert {"confusion_matrix", "misclassified"} <= {k.split(".")[0] for k in summary}
    assert (good / "confusion_matrix.png").is_file() and (good / "misclassified.png").is_file()
    assert [r.exit.exit_code for r in records["exit"]] == [0]
    assert [r.exit.exit_code for r in wandb_records(bad)["exit"]] == [1]
    # The README's upload command for a sweep, outputs/multirun/<date>/<sweep>/*/wandb/
    # offline-run-*, finds both jobs' runs, the failed one's included.
    sweep = sweep_dir(tmp_path).relative_to(tmp_path)
    found = wandb_sync_dry_run(tmp_path, f"{sweep}/*/wandb/offline-run-*")
    assert "Would sync 2 run(s)" in found, found


@needs_fmnist
@pytest.mark.slow
def test_optuna_search_runs_3_trials_and_reports_the_best(tmp_path):
    proc = run_cli(
        [
            "-m",
            "hparams_search=fmnist_optuna",
            "hydra.sweeper.n_trials=3",
            *TINY,
            "scheduler=cosine",
            "test=false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 3
    scores = [read_results(d)["best_val_acc"] for d in dirs]
    best = OmegaConf.load(sweep_dir(tmp_path) / "optimization_results.yaml")
    assert best.best_value == max(scores)
    assert set(best.best_params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "module.label_smoothing",
        "augmentation",
    }
    lrs = {OmegaConf.load(d / ".hydra" / "config.yaml").optimizer.lr for d in dirs}
    assert len(lrs) == 3  # three different trials, not one repeated
    assert f"best: {best.best_value:.4f} with" in proc.stdout


def test_slurm_launcher_follows_the_trainer_config(compose_cfg):
    from hydra import compose

    cfg = compose(
        "train",
        overrides=[
            "hydra/launcher=slurm",
            "trainer.num_nodes=2",
            "trainer.devices=4",
            "hydra.launcher.partition=gpu",
        ],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu" and launcher.array_parallelism == 8
