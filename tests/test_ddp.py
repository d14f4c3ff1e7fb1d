"""trainer=ddp: two processes on the CPU (gloo) from the normal command line, one run dir.

With ``strategy=ddp`` Lightning starts the second process by running the command line again, as
SLURM or torchrun start every rank: that process follows rank 0's decision and writes nothing."""

from __future__ import annotations

import csv

import pytest

from conftest import needs_fmnist, read_results, run_cli, run_dirs


@needs_fmnist
# ddp_spawn (trainer=ddp's own) in make test-all: 20 s more, and the ddp path is the subtler one.
@pytest.mark.parametrize("strategy", [pytest.param("ddp_spawn", marks=pytest.mark.heavy), "ddp"])
def test_ddp_on_the_cpu_trains_in_two_processes_into_one_run_dir(tmp_path, strategy):
    proc = run_cli(
        [
            "trainer=ddp",
            f"trainer.strategy={strategy}",
            "model=lenet5",
            "data.samples_per_class=40",  # 400 images, batches of 10: 20 steps per process
            "data.batch_size=10",
            "data.val_size=100",
            "trainer.max_epochs=1",
            "trainer.limit_test_batches=1",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    [run_dir] = run_dirs(tmp_path)  # Hydra + DDP, yet one run dir
    assert [p.parent for p in (tmp_path / "outputs").glob("*/*/.hydra")] == [run_dir]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["epochs"] == 1
    assert 0 <= results["best_val_acc"] <= 1 and "per_class_acc" in results
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Each process took half of the 40 batches; the epoch's metrics come from rank 0's logger.
    assert [r["step"] for r in rows if r.get("val_acc")] == ["19"]
