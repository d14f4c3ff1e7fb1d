"""The run record and run identity, without training: what changes a run's fingerprint and what
does not, the keys cnnlab-compare leaves out, and results.json read and written as it was."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from cnnlab.runs.record import (
    NOT_IDENTITY,
    RunRecord,
    Status,
    fingerprint,
    identity_differences,
    is_identity,
)


def plain(**changes):
    """A small config with the top-level keys a run config has."""
    cfg = OmegaConf.create(
        {
            "seed": 1,
            "name": "lenet5-fashion_mnist",
            "resume": None,
            "resume_fallback": True,
            "ckpt_path": None,
            "skip_completed": True,
            "test": True,
            "model": {"_target_": "cnnlab.models.lenet.LeNet5", "num_classes": 10},
            "data": {"root": "${paths.data_dir}/fmnist", "batch_size": 128},
            "optimizer": {"lr": 0.1},
            "logger": {"csv": {"save_dir": "${paths.output_dir}/csv"}},
            "callbacks": {"progress": {"every_n_steps": 50}},
            "trainer": {"max_epochs": 2, "default_root_dir": "${paths.output_dir}"},
            "paths": {"data_dir": "/data", "output_root": "/out", "output_dir": "/out/run1"},
            "ablation": None,
        }
    )
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def test_hashes_stored_by_earlier_versions_stay_valid():
    """Pinned: the hash of earlier cnnlab versions for this config. A change of the identity
    rules must not change it, or every completed run would look new to a re-run sweep."""
    assert fingerprint(plain()) == "66b6676717fef8bd"


@pytest.mark.parametrize(
    "key, value",
    [
        ("seed", 2),
        ("model__num_classes", 3),
        ("optimizer__lr", 0.01),
        ("trainer__max_epochs", 3),
        ("data__batch_size", 64),
        ("test", False),
        # A run started from a checkpoint trains something else than one from scratch.
        ("ckpt_path", "/out/run0/checkpoints/last.ckpt"),
        ("callbacks__ema", {"decay": 0.999}),
    ],
)
def test_what_changes_the_identity(key, value):
    changed = plain(**{key: value})
    assert fingerprint(changed) != fingerprint(plain())
    differences = identity_differences(plain(), changed)
    assert differences and all(d.startswith(key.replace("__", ".")) for d in differences)


@pytest.mark.parametrize(
    "key, value",
    [
        ("name", "other"),
        ("resume", "auto"),
        ("resume_fallback", False),
        ("skip_completed", False),
        ("logger__wandb", {"project": "p"}),
        ("ablation", {"number": 3}),
        # Another machine, another run dir: every path is relative to paths.
        ("paths__data_dir", "/mnt/data"),
        ("paths__output_root", "/scratch/outputs"),
        ("paths__output_dir", "/scratch/outputs/run7"),
    ],
)
def test_what_does_not_change_the_identity(key, value):
    assert fingerprint(plain(**{key: value})) == fingerprint(plain())
    assert identity_differences(plain(), plain(**{key: value})) == []


def test_a_key_added_to_the_config_later_changes_no_hash():
    """resume_fallback joined the config after hashes were stored: a config without it (as the
    earlier version composed it) hashes as one with it."""
    without = plain()
    del without["resume_fallback"]
    assert fingerprint(without) == fingerprint(plain())


def test_compare_and_identity_share_one_list():
    from cnnlab.analysis import compare

    assert not hasattr(compare, "IGNORED")
    for key in NOT_IDENTITY:
        assert not is_identity(key) and not is_identity(key + ".anything")
    # A prefix of a key is not the key: "names" is not "name", "loggers.x" not "logger".
    assert is_identity("names") and is_identity("loggers.x") and is_identity("callbacks.ema")


def test_compare_groups_by_an_identity_difference_and_not_by_a_logger(tmp_path):
    from cnnlab.analysis.compare import Run, differing

    def run(i, **params):
        base = {"model": "lenet5", "seed": str(i), "logger": "csv", "callbacks": "default"}
        return Run(f"r{i}", "completed", {**base, **params}, {"test_acc": 0.5})

    runs = [run(0), run(1, logger="wandb"), run(2, callbacks="ema"), run(3, **{"paths.x": "/a"})]
    assert differing(runs) == ["callbacks"]


def test_a_record_keeps_every_key_and_reads_typed(tmp_path):
    data = {
        "name": "x",
        "status": "interrupted",
        "run_dir": str(tmp_path),
        "config_hash": "abc",
        "test_acc": 0.9,
        "per_class": {"cat": 0.5},
        "resumed": [{"status": "running"}],
        "wall_time_s": 12.5,
    }
    (tmp_path / "results.json").write_text(json.dumps(data))
    record = RunRecord.read(tmp_path)
    assert record == data and record.status is Status.INTERRUPTED and record.unfinished
    assert record.run_dir == tmp_path and record.wall_time_s == 12.5 and not record.is_pointer
    assert record.resumed == [{"status": "running"}] and record.error is None
    record.status = Status.COMPLETED
    record.write(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == {**data, "status": "completed"}
    assert not list(tmp_path.glob("*.part"))


def test_unreadable_records_read_as_none(tmp_path):
    assert RunRecord.read(tmp_path) is None
    (tmp_path / "results.json").write_text('{"status": "runn')  # a kill mid-write, pre-atomic
    assert RunRecord.read(tmp_path) is None
    (tmp_path / "results.json").write_text("[1, 2]")
    assert RunRecord.read(tmp_path) is None


def test_liveness_is_the_owner_process_on_this_host():
    import subprocess
    import sys

    record = RunRecord(status="running")
    record.mark_started()
    assert record.is_live()
    assert not RunRecord({**record, "status": "interrupted"}).is_live()
    assert not RunRecord({**record, "host": "another-host"}).is_live()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout  # fmt: skip
    assert not RunRecord({**record, "pid": int(dead)}).is_live()
