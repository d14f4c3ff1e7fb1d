"""The run record and run identity, without training: what changes a run's fingerprint and what
does not, the keys cnnlab-compare leaves out, and results.json read and written as it was."""

from __future__ import annotations

import enum
import json

import pytest
from omegaconf import OmegaConf

from cnnlab.config.schema import register
from cnnlab.runs.record import (
    _HASHED_AS_NULL,
    NOT_IDENTITY,
    RunRecord,
    Status,
    fingerprint,
    identity,
    identity_differences,
    is_identity,
)
from conftest import CONF


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


class Mode(enum.Enum):
    FAST = 1


def interpolated(**changes):
    """A config with each kind of interpolation a run config may hold: of a value, of a whole
    node, through a resolver, in a list, relative, escaped, and into paths and the name."""
    register()
    cfg = OmegaConf.create(
        {
            "seed": 7,
            "name": "${model.arch}-${data.set}",
            "resume": "auto",
            "resume_fallback": False,
            "skip_completed": True,
            "model_summary": {"macs": 415680},
            "model": {
                "arch": "lenet5",
                "num_classes": "${data.num_classes}",
                "widths": [6, "${data.channels}", 16],
                "mode": Mode.FAST,
            },  # fmt: skip
            "data": {
                "set": "fmnist",
                "root": "${paths.data_dir}/fmnist",
                "num_classes": "${cnnlab.class_count:${data.classes},10}",
                "classes": [0, 2, 4],
                "channels": 1,
                "seed": "${seed}",
                "note": "escaped \\${seed}",
            },  # fmt: skip
            "optimizer": {"lr": 0.1, "momentum": 0.9},
            "scheduler": {"optimizer": "${optimizer}", "warmup": "${.steps}", "steps": 5},
            "callbacks": {"ckpt": {"dirpath": "${paths.output_dir}/checkpoints", "every": 100}},
            "logger": {"csv": {"save_dir": "${paths.output_dir}/csv"}},
            "trainer": {"max_epochs": 2, "default_root_dir": "${paths.output_dir}"},
            "paths": {
                "root_dir": "/r",
                "data_dir": "${paths.root_dir}/data",
                "output_dir": "/r/out/run1",
            },  # fmt: skip
            "ablation": None,
        }
    )
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def test_hashes_stored_by_earlier_versions_stay_valid():
    """Pinned: the hash of earlier cnnlab versions for these configs (the interpolated ones with
    and without a relative interpolation). A change of the identity rules, or of the way they
    are computed, must not change them, or every completed run would look new to a re-run
    sweep."""
    assert fingerprint(plain()) == "66b6676717fef8bd"
    assert fingerprint(interpolated()) == "3118e7c0c408a155"
    assert fingerprint(interpolated(scheduler__warmup=3)) == "c3ebf633e393ff43"


def whole_copy_identity(cfg) -> dict:
    """The identity as cnnlab computed it when the stored hashes were written: resolved in a
    plain OmegaConf copy of the whole config."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, enum_to_str=True))
    for key in cfg.get("paths") or {}:
        cfg.paths[key] = f"<paths.{key}>"
    for key in NOT_IDENTITY:
        if key in _HASHED_AS_NULL:
            cfg[key] = None
        elif "." not in key and key != "paths":
            cfg.pop(key, None)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def shipped_choices() -> list[list[str]]:
    """The overrides of each experiment and of each option of the groups that set values by
    interpolation (models, data sets, transfer strategies...)."""
    experiments = sorted((CONF / "experiment").rglob("*.yaml"))
    choices = [["experiment=" + str(p.relative_to(CONF / "experiment"))[:-5]] for p in experiments]
    for group in ("model", "data", "transfer", "augmentation", "scheduler"):
        choices += [[f"{group}={p.stem}"] for p in sorted((CONF / group).glob("*.yaml"))]
    return [[]] + choices


# A few of them, of each kind: the default, a transfer and a paper recipe, a timm model, an image
# folder (whose class count resolver fails without its root), an augmentation pipeline.
SOME_CHOICES = [
    [],
    ["experiment=transfer/mnv2_two_stage"],
    ["experiment=paper/efficientnet"],
    ["model=timm"],
    ["data=image_folder"],
    ["augmentation=randaugment"],
]


@pytest.mark.parametrize(
    "choices",
    [
        pytest.param(SOME_CHOICES, id="some"),
        pytest.param(shipped_choices(), marks=pytest.mark.heavy, id="all"),
    ],
)
def test_shipped_configs_hash_as_a_whole_copy_of_them_did(compose_cfg, choices):
    """identity() resolves the interpolations in a config of what they read, not in a copy of
    the whole config: the same values for the configs cnnlab ships, as Hydra hands them to a
    run (unresolved)."""
    compared = 0
    for overrides in choices:
        cfg = compose_cfg(overrides)
        try:
            expected = whole_copy_identity(cfg)
        except Exception as e:
            with pytest.raises(type(e)):
                identity(cfg)
            continue
        assert identity(cfg) == expected, overrides
        compared += 1
    assert compared >= len(choices) - 2


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
