"""``cnnlab-train --dry-run``: what each job of a re-run would do, through the real command line,
over a fixed sweep dir holding a completed, an interrupted, a failed and a never-started job
(hand-written run dirs), with nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cnnlab.config.compose import job_configs
from cnnlab.runs.record import fingerprint
from conftest import run_cli
from test_runs_planning import save

SWEEP = ["-m", "seed=0,1,2,3,4", "model=lenet5", "data.samples_per_class=10"]


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its content's hash and modification time."""
    return {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None,
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
    }


def write_run(run_dir: Path, job, status: str, step: int | None = None, **extra) -> None:
    _, config_hash, plain = job
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    record = {"status": status, "run_dir": str(run_dir), "config_hash": config_hash, **extra}
    (run_dir / "results.json").write_text(json.dumps(record))
    if step is not None:
        save(run_dir / "checkpoints" / "last.ckpt", step, plain)


@pytest.fixture
def sweep_jobs(tmp_path, monkeypatch):
    """(job dir, config hash, plain config) of each of SWEEP's jobs in a fixed sweep dir under
    tmp_path, read while the job is current. Hashed unresolved, as Hydra hands a run its config
    and the run hashes it; plain values, as a checkpoint stores them (torch's weights_only load
    takes no enum)."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "outputs" / "sweep"
    overrides = [*SWEEP[1:], f"hydra.sweep.dir={sweep}"]
    jobs = [
        (
            Path(cfg.paths.output_dir),
            fingerprint(cfg),
            OmegaConf.create(OmegaConf.to_container(cfg, enum_to_str=True)),
        )  # fmt: skip
        for cfg in job_configs(overrides, multirun=True, resolve=False)
    ]
    yield sweep, jobs
    HydraConfig.instance().cfg = None  # the other tests run outside a Hydra job


def test_dry_run_prints_each_jobs_plan_and_writes_nothing(tmp_path, sweep_jobs):
    sweep, jobs = sweep_jobs
    assert [job_dir for job_dir, _, _ in jobs] == [sweep / str(n) for n in range(5)]
    write_run(sweep / "0", jobs[0], "completed", test_acc=0.5)
    write_run(sweep / "1", jobs[1], "interrupted", step=30)
    write_run(sweep / "2", jobs[2], "failed", step=40, error="OSError: disk full")
    earlier = tmp_path / "outputs" / "2026-01-01" / "12-00-00_lenet5"
    write_run(earlier, jobs[3], "completed")
    (sweep / "4" / ".hydra").mkdir(parents=True)  # killed during start-up: never started
    before = tree(tmp_path)

    proc = run_cli(["--dry-run", *SWEEP, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plans = [line.strip() for line in proc.stdout.splitlines() if line.startswith("        ")]
    assert plans == [
        f"skip: completed in {sweep / '0'}",
        f"continue {sweep / '1'} from step 30",
        f"retry {sweep / '2'} (it failed: OSError: disk full) from step 40",
        f"skip: same as {earlier}",
        f"train in {sweep / '4'}",
    ]
    assert "job   1 seed=1,model=lenet5,data.samples_per_class=10" in proc.stdout
    assert "dry run: 2 skip, 1 continue, 1 retry, 1 train" in proc.stdout
    # Nothing written: no run dir, results.json, lock, index or Hydra file, no time changed.
    assert tree(tmp_path) == before


def test_dry_run_refuses_a_flag_it_cannot_plan_and_an_optuna_search(tmp_path):
    proc = run_cli(["--dry-run", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 2 and "--dry-run takes -m (--multirun) and overrides" in proc.stderr
    proc = run_cli(["--dry-run", "-m", "hparams_search=fmnist_optuna"], cwd=tmp_path)
    assert proc.returncode == 2 and "chooses its jobs as it goes" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_command_line_value_replaces_the_sweeps_params_for_its_key(tmp_path, monkeypatch):
    """As Hydra's basic sweeper: the experiment sweeps seed over 0,1,2 and model.se_reduction over
    null,4; seed=0 on the command line leaves two jobs, in the params' order."""
    monkeypatch.chdir(tmp_path)
    overrides = ["experiment=ablation/squeeze_excitation", "seed=0", "trainer.max_epochs=1"]
    jobs = list(job_configs(overrides, multirun=True))
    HydraConfig.instance().cfg = None
    assert [(cfg.model.se_reduction, cfg.seed) for cfg in jobs] == [(None, 0), (4, 0)]
