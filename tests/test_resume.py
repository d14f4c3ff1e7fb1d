"""Faults and resume through the real command line: SIGKILL mid-epoch and resume=<run dir>, a kill
during a checkpoint save, a NaN loss, and a multirun run twice."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import needs_fmnist, read_results, run_cli, run_dirs

# 1,000 training images in batches of 10: 100 steps per epoch, last.ckpt every 15 steps.
SMALL = [
    "model=lenet5",
    "data.samples_per_class=100",
    "data.batch_size=10",
    "data.val_size=500",
    "optimizer.lr=0.01",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "callbacks.last_checkpoint.every_n_train_steps=15",
    "callbacks.progress.every_n_steps=5",
    "test=false",
    "callbacks=ema",
]


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab.cli.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_when_printed(proc: subprocess.Popen, line_start: str, timeout: float = 300) -> str:
    """SIGKILL ``proc`` as soon as it prints a line starting with ``line_start``."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(line_start):
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(seen)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


def killed_and_resumed(args: list[str], tmp_path: Path, kill_at: str, steps: tuple[int, int],
                       timeout: float = 600) -> tuple[Path, Path]:  # fmt: skip
    """Run ``args`` whole and, beside it, SIGKILLed when it prints ``kill_at`` (its last.ckpt
    strictly between ``steps``, mid-epoch) and resumed: (the whole run's dir, the resumed one's)."""
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    whole = start_cli(args, cwd=tmp_path / "whole")
    killed = start_cli(args, cwd=tmp_path / "killed")
    kill_when_printed(killed, kill_at, timeout=timeout)
    [run_dir] = run_dirs(tmp_path / "killed")
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert steps[0] < stopped["global_step"] < steps[1], "not mid-epoch"
    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    whole_out, _ = whole.communicate(timeout=timeout)
    assert whole.returncode == 0, whole_out
    [whole_dir] = run_dirs(tmp_path / "whole")
    return whole_dir, run_dir


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without data_wait_frac, a measured time that differs from run to run."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in row.items() if k != "data_wait_frac"} for row in csv.DictReader(f)
        ]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's raw weights and their EMA in last.ckpt (whose state_dict is the EMA's)."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ema = {f"ema.{k}": v for k, v in ckpt["state_dict"].items()}
    return {**ckpt["raw_state_dict"], **ema}


@needs_fmnist
def test_sigkill_mid_epoch_and_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    whole = start_cli(SMALL, cwd=tmp_path / "whole")
    killed = start_cli(SMALL, cwd=tmp_path / "killed")
    kill_when_printed(killed, "epoch 1 step 40/")
    [run_dir] = run_dirs(tmp_path / "killed")
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 100 < stopped["global_step"] < 200 and stopped["global_step"] % 100, "not mid-epoch"
    assert read_results(run_dir)["status"] == "running"  # what a SIGKILL leaves behind

    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, out
    [whole_dir] = run_dirs(tmp_path / "whole")

    # Continued in its own run dir: no new one, and results.json tells the story.
    assert run_dirs(tmp_path / "killed") == [run_dir]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["epochs"] == 2
    assert [r["status"] for r in results["resumed"]] == ["running"]
    assert results["best_val_acc"] == read_results(whole_dir)["best_val_acc"]
    # Judged on both epochs' losses: the one before the kill came back from last.ckpt.
    assert results["convergence"]["epochs"] == 2
    assert results["convergence"] == read_results(whole_dir)["convergence"]
    # Bit-identical weights and EMA weights, and metrics.csv row for row: the rows logged before
    # the kill, and epoch means (train_loss_epoch, train_acc) over the batches of both sessions.
    expected, got = weights(whole_dir), weights(run_dir)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not torch.equal(got["ema.model.c1.0.weight"], got["model.c1.0.weight"])
    rows = metrics_rows(run_dir)
    assert rows == metrics_rows(whole_dir)
    assert {r["epoch"] for r in rows if r.get("train_acc")} == {"0", "1"}


# 300 training images in batches of 10 (30 steps an epoch); 200 validation and 200 test images in
# batches of 10, 20 batches each, so that a kill lands inside the validation or the test loop.
# last.ckpt every 10 steps: one falls on the epoch's last step, the one Lightning validates after.
EVALUATED = [
    "model=lenet5",
    "data.samples_per_class=30",
    "data.batch_size=10",
    "data.val_size=200",
    "data.eval_batch_size=10",
    "trainer.limit_test_batches=20",
    "optimizer.lr=0.01",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=5",
    "callbacks.last_checkpoint.every_n_train_steps=10",
    "callbacks.progress.every_n_steps=5",
    "callbacks=ema",
]
# What differs between two runs of one config: where and when they ran.
RUN_SPECIFIC = {"run_dir", "pid", "host", "wall_time_s", "resumed", "tested_checkpoint"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The run dir of EVALUATED trained and tested without a fault."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(EVALUATED, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = run_dirs(cwd)
    return run_dir


def assert_same_run(run_dir: Path, whole: Path) -> None:
    """``run_dir`` ends as the uninterrupted ``whole``: bit-identical weights (raw and EMA),
    metrics.csv row for row, and results.json but for where and when it ran."""
    expected, got = weights(whole), weights(run_dir)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert metrics_rows(run_dir) == metrics_rows(whole)
    results, whole_results = read_results(run_dir), read_results(whole)
    assert {k: v for k, v in results.items() if k not in RUN_SPECIFIC} == {
        k: v for k, v in whole_results.items() if k not in RUN_SPECIFIC
    }
    assert results["tested_checkpoint"] == whole_results["tested_checkpoint"].replace(
        str(whole), str(run_dir)
    )


@needs_fmnist
@pytest.mark.heavy  # an uninterrupted run (shared), a killed one and its resume: ~1 min
def test_sigkill_during_validation_and_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    killed = start_cli(EVALUATED, cwd=tmp_path)
    kill_when_printed(killed, "epoch 0 validation 10/")
    [run_dir] = run_dirs(tmp_path)
    # Not the checkpoint of step 30, before its validation (Lightning would resume it as
    # validated, and skip the rest of the run): the one of step 20.
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 20

    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Steps 21 to 30 again, then the interrupted validation, whole, then epoch 1.
    assert "epoch 0 step 30/30" in resumed.stdout and "epoch 0 validation 20/20" in resumed.stdout
    assert run_dirs(tmp_path) == [run_dir]
    assert [r["status"] for r in read_results(run_dir)["resumed"]] == ["running"]
    assert_same_run(run_dir, uninterrupted)
    validated = [r["epoch"] for r in metrics_rows(run_dir) if r.get("val_acc")]
    assert validated == ["0", "1"]  # each epoch's validation logged once


@needs_fmnist
@pytest.mark.heavy  # an uninterrupted run (shared), a killed one and its re-run: ~1 min
def test_sigkill_during_testing_and_a_rerun_tests_without_training_again(tmp_path, uninterrupted):
    killed = start_cli(EVALUATED, cwd=tmp_path)
    kill_when_printed(killed, "test 10/")
    [run_dir] = run_dirs(tmp_path)
    stopped = read_results(run_dir)
    assert stopped["status"] == "running" and stopped["epochs"] == 2 and "test_acc" not in stopped

    again = run_cli([*EVALUATED, "resume=auto"], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"cnnlab: continue {run_dir} from step 60" in again.stdout
    # Not a training step, not a validation: the test alone, whole.
    assert "epoch " not in again.stdout and "test 20/20" in again.stdout, again.stdout
    assert run_dirs(tmp_path) == [run_dir]
    assert_same_run(run_dir, uninterrupted)
    tested = [r for r in metrics_rows(run_dir) if r.get("test_acc")]
    assert len(tested) == 1  # logged once


@needs_fmnist
@pytest.mark.heavy  # ~8 s; make test-faults runs the fault matrix's rows
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    """An absurd learning rate with ReLUs: the loss is finite at step 1, infinite or NaN at 2."""
    proc = run_cli(
        [
            "model=lenet5_modern",
            "scheduler=none",
            "optimizer.lr=1e10",
            "data.samples_per_class=20",
            "data.val_size=100",
            "data.batch_size=10",
            "callbacks.last_checkpoint.every_n_train_steps=1",
            "callbacks.nonfinite_loss.every_n_steps=1",
            "test=false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "became NaN or infinite" in proc.stderr and "Traceback" not in proc.stderr
    [run_dir] = run_dirs(tmp_path)
    results = read_results(run_dir)
    assert results["status"] == "failed" and "became NaN or infinite" in results["error"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] >= 1
    assert all(t.isfinite().all() for t in ckpt["state_dict"].values() if t.is_floating_point())


SAVE_FOREVER = """
import sys, torch
from cnnlab.training.faults import AtomicCheckpointIO
io, i = AtomicCheckpointIO(), 0
while True:
    i += 1
    io.save_checkpoint({"i": i, "w": torch.full((8_000_000,), float(i))}, sys.argv[1])
"""


def test_a_kill_during_a_checkpoint_save_leaves_the_last_checkpoint_whole(tmp_path):
    """SIGKILL while the writer is inside a save (its .part file exists), several times."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    part = last.with_name("last.ckpt.part")
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(last)])
        deadline = time.monotonic() + 120
        # Wait for a save after the first one, so that a complete last.ckpt exists already.
        while not (last.exists() and part.exists()):
            assert time.monotonic() < deadline and proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(last, weights_only=True)
        assert ckpt["w"].shape == (8_000_000,) and bool((ckpt["w"] == ckpt["i"]).all())
    assert part.exists()  # a kill did land inside a save


@needs_fmnist
@pytest.mark.heavy  # two sweeps of two jobs: ~18 s; make test-faults runs it with the others
def test_rerunning_a_multirun_skips_completed_jobs_by_config(tmp_path):
    tiny = ["-m", "debug=fdr", "model=lenet5", "data.samples_per_class=20", "test=false"]
    # The sweep dir is named here: this branch's default one needs Hydra's runtime values, which
    # a sweep dir cannot use (the sweeps branch fixes that).
    first = run_cli([*tiny, "seed=1,2", "hydra.sweep.dir=outputs/multirun/first"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    done = {read_results(d)["config_hash"]: d for d in run_dirs(tmp_path)}
    assert len(done) == 2

    # Another order (other job numbers) and one new config: only the new one trains.
    again = run_cli([*tiny, "seed=2,3,1", "hydra.sweep.dir=outputs/multirun/again"], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    new = [d for d in run_dirs(tmp_path) if d not in done.values()]
    statuses = sorted(read_results(d)["status"] for d in new)
    assert statuses == ["completed", "skipped", "skipped"]
    for run_dir in new:
        results = read_results(run_dir)
        if results["status"] == "skipped":
            assert results["same_as"] == str(done[results["config_hash"]])
            assert not (run_dir / "checkpoints").exists() and not (run_dir / "csv").exists()


def test_checkpoints_load_whether_or_not_the_model_was_compiled(compose_cfg, tmp_path):
    from omegaconf import OmegaConf

    from cnnlab.config.schema import validate
    from cnnlab.inference.loading import load, rebuild

    cfg = validate(compose_cfg(["model=lenet5", "module.compile=true"]))
    names = [str(i) for i in range(10)]
    compiled = rebuild(cfg, names)
    plain = rebuild(OmegaConf.merge(cfg, {"module": {"compile": False}}), names)
    # module.compile=true compiles in place: the same keys as the plain model's.
    assert compiled.state_dict().keys() == plain.state_dict().keys()

    # A model wrapped by torch.compile(model), as other code does, saves _orig_mod. keys.
    wrapped = torch.compile(plain.model)
    state = {k: v for k, v in plain.state_dict().items() if not k.startswith("model.")}
    state.update({f"model.{k}": v for k, v in wrapped.state_dict().items()})
    assert any("_orig_mod." in k for k in state)
    path = tmp_path / "wrapped.ckpt"
    config = OmegaConf.to_container(cfg)
    torch.save({"state_dict": state, "cnnlab": {"config": config, "class_names": names}}, path)
    loaded = load(path, device="cpu").module
    for key, value in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@needs_fmnist
@pytest.mark.heavy  # a killed one-epoch sweep and its re-run on 1,000 images: ~20 s
def test_rerunning_a_multirun_continues_a_killed_job_in_its_own_run_dir(tmp_path):
    sweep = ["-m", *SMALL, "trainer.max_epochs=1", "seed=0"]
    killed = start_cli([*sweep, "hydra.sweep.dir=outputs/multirun/first"], cwd=tmp_path)
    kill_when_printed(killed, "epoch 0 step 40/")
    [run_dir] = run_dirs(tmp_path)
    assert read_results(run_dir)["status"] == "running"

    again = run_cli([*sweep, "hydra.sweep.dir=outputs/multirun/again"], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    # The job trained on in the killed job's dir, from its last checkpoint (step 30); its own
    # dir points there for the sweep's summary.
    pointer = read_results(tmp_path / "outputs" / "multirun" / "again" / "0")
    assert pointer["continued_in"] == str(run_dir) and pointer["status"] == "completed"
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["epochs"] == 1
    assert [r["status"] for r in results["resumed"]] == ["running"]
    steps = [int(r["step"]) for r in metrics_rows(run_dir) if r.get("train_loss_step")]
    assert steps == sorted(set(steps)) and steps[-1] >= 90  # each step once, to the end


FDR = ["-m", "debug=fdr", "model=lenet5", "data.samples_per_class=20", "test=false"]


@pytest.mark.heavy  # two sweeps of two jobs: ~15 s
def test_rerunning_a_multirun_in_a_fixed_sweep_dir_skips_completed_jobs_in_place(tmp_path):
    """The issue's report: the same multirun twice with hydra.sweep.dir named."""
    args = [*FDR, "seed=0,1", "hydra.sweep.dir=outputs/my_sweep"]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    jobs = [tmp_path / "outputs" / "my_sweep" / str(i) for i in range(2)]
    before = [(j / "results.json").read_bytes() for j in jobs]

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sweep: 2 skipped" in again.stdout and "ERROR" not in again.stdout + again.stderr
    # Nothing trained, nothing written over: the records are those of the first call.
    assert [(j / "results.json").read_bytes() for j in jobs] == before
    assert "Trainer.fit" not in again.stdout + again.stderr


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every few milliseconds)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@needs_fmnist
@pytest.mark.heavy  # two killed sweeps and a re-run: ~20 s
def test_a_sweep_killed_during_start_up_is_rerun_in_its_fixed_sweep_dir(tmp_path):
    """Killed before job 0 wrote its results.json; then killed while job 1 loaded its data
    (status running, no checkpoint): each re-run starts what never started, skips what
    completed, and the summary says so."""
    args = [*FDR, "seed=0,1", "hydra.sweep.dir=outputs/fixed"]
    jobs = [tmp_path / "outputs" / "fixed" / str(i) for i in range(2)]
    proc = start_cli(args, cwd=tmp_path)
    kill_when(proc, lambda: (jobs[0] / ".hydra" / "config.yaml").is_file())
    assert not (jobs[0] / "results.json").exists()

    def job1_loading() -> bool:
        return (jobs[1] / "results.json").is_file() and not (jobs[1] / "checkpoints").exists()

    proc = start_cli(args, cwd=tmp_path)
    kill_when(proc, job1_loading)
    assert read_results(jobs[0])["status"] == "completed"
    assert read_results(jobs[1])["status"] == "running"  # its owner is dead

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "ERROR" not in again.stdout + again.stderr
    assert "job   0 skipped" in again.stdout and "job   1 completed" in again.stdout
    assert "sweep: 1 completed, 1 skipped" in again.stdout
    assert f"continue {jobs[1]} from step 0" in again.stdout
    results = read_results(jobs[1])
    assert results["status"] == "completed" and results["resumed"] == [{"status": "running"}]


@needs_fmnist
@pytest.mark.heavy  # three trainings of LeNet-5 on 1,000 images: minutes on a 2-core CPU
def test_sigterm_checkpoints_at_once_and_resume_auto_continues(tmp_path):
    """SIGTERM mid-epoch 1 (SLURM's pre-emption); then a resume with a changed seed (refused), a
    truncated last.ckpt and resume_fallback=false (refused, naming it), and resume=auto with a
    new name (taken), which continues from the newest whole checkpoint to the end."""
    args = [*SMALL, "callbacks.last_checkpoint.every_n_train_steps=1000"]
    proc = start_cli(args, cwd=tmp_path)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 1 step 40/"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "cnnlab: SIGTERM at step" in out
    [run_dir] = run_dirs(tmp_path)
    assert read_results(run_dir)["status"] == "interrupted"
    last = run_dir / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert 140 <= step < 160  # written at the signal, not at the epoch end (step 100)

    changed = run_cli([f"resume={run_dir}", "seed=7"], cwd=tmp_path)
    assert changed.returncode == 2 and "seed (42 -> 7)" in changed.stderr, changed.stderr

    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    refused = run_cli([f"resume={run_dir}", "resume_fallback=false"], cwd=tmp_path)
    assert refused.returncode == 2 and f"{last} is not a whole checkpoint" in refused.stderr

    resumed = run_cli([*args, "resume=auto", "name=renamed"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{last} is not a whole checkpoint" in resumed.stdout + resumed.stderr
    # The two refused calls are recorded as failed in the dirs Hydra made for them, as any
    # config error is; the run itself went on in its own dir.
    refusals = [d for d in run_dirs(tmp_path) if d != run_dir]
    assert [read_results(d)["status"] for d in refusals] == ["failed", "failed"]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["epochs"] == 2
    assert [r["status"] for r in results["resumed"]] == ["interrupted"]
    steps = [int(r["step"]) for r in metrics_rows(run_dir) if r.get("train_loss_step")]
    assert steps == sorted(set(steps)) and steps[-1] >= 190  # each step once, to the end


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A real file system of ``size`` at ``path`` (a tmpfs), unmounted afterwards."""
    path.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@needs_fmnist
@pytest.mark.heavy  # two trainings of LeNet-5 on 1,000 images: minutes on a 2-core CPU
def test_a_full_disk_fails_the_run_keeps_last_ckpt_and_a_rerun_retries_it(tmp_path):
    with small_disk(tmp_path / "disk", "16m") as disk:
        args = ["-m", *SMALL, f"paths.output_root={disk}", f"hydra.sweep.dir={disk}/sweep"]
        job = disk / "sweep" / "0"
        last = job / "checkpoints" / "last.ckpt"
        proc = start_cli(args, cwd=tmp_path)
        deadline = time.monotonic() + 300
        while not last.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.005)
        # Fill the disk, leaving room for logs and results.json but not for a checkpoint.
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 200_000))
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 1, out  # the sweep did not complete
        results = read_results(job)
        assert results["status"] == "failed", out
        error = results["error"]
        assert error.startswith("The disk filled up while saving") and f"mounted at {disk}" in error
        assert "MiB free and the checkpoint needs about" in error and "Traceback" not in error
        step = torch.load(last, weights_only=True)["global_step"]  # whole, and a real state
        assert step % 15 == 0 and step > 0

        filler.unlink()
        again = run_cli(args, cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"retry {job} (it failed: The disk filled up" in again.stdout
        assert f"from step {step}" in again.stdout
        results = read_results(job)
        assert results["status"] == "completed" and results["epochs"] == 2
        assert results["resumed"] == [{"status": "failed", "error": error}]


@needs_fmnist
@pytest.mark.heavy
def test_two_processes_starting_the_same_sweep_train_each_job_once(tmp_path):
    """Two cnnlab-train -m with one sweep dir, started together: each job dir's lock lets one
    of them train it; the other leaves it (busy) and goes on to the next job, or finds it
    completed. Each summary tells what its own call did."""
    args = ["-m", *SMALL, "trainer.max_epochs=1", "seed=0,1", "hydra.sweep.dir=outputs/shared"]
    procs = [start_cli(args, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    jobs = [tmp_path / "outputs" / "shared" / str(i) for i in range(2)]
    for job in jobs:
        assert read_results(job)["status"] == "completed", outs
        # Both processes log into the job's train.log; only one of them trained it.
        assert (job / "train.log").read_text().count("`Trainer.fit` stopped") == 1, outs
    # A process that left a job to the other exits 1 if that job was still running at its end
    # (its sweep had not completed), 0 otherwise; no summary calls a job it trained skipped.
    assert all(p.returncode in (0, 1) for p in procs), outs
    assert "ERROR" not in "".join(outs)
    for out in outs:
        for i, job in enumerate(jobs):
            if f"run_dir: {job}\n" in out:  # the table this process printed after training it
                assert f"job   {i} completed" in out, out
    # A re-run's plan, asked first of real runs (whose config hashes Hydra's config, unresolved).
    dry = run_cli(["--dry-run", *args], cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"skip: completed in {jobs[0]}" in dry.stdout and "dry run: 2 skip" in dry.stdout


@needs_fmnist
@pytest.mark.heavy  # two starts, a kill and a resume of a one-epoch run: ~1 min
def test_two_processes_starting_the_same_config_under_resume_auto_train_it_once(tmp_path):
    """A job script started twice at once (each call with its own timestamped run dir): one
    trains; the other leaves the run to it, says so, exits 0 at once and leaves no dir behind.
    Once the owner is killed, resume=auto continues its run in its dir."""
    # Long enough (seconds of training) that the owner still trains when the other call, after
    # its own start-up, plans: with one epoch a quiet machine finished the run first, and the
    # other call then skipped it as completed.
    args = [*EVALUATED, "trainer.max_epochs=15", "test=false", "resume=auto"]
    procs = [start_cli(args, cwd=tmp_path) for _ in range(2)]
    deadline = time.monotonic() + 300
    while all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "neither process left the run to the other"
        time.sleep(0.05)
    [left] = [p for p in procs if p.poll() is not None]
    [owner] = [p for p in procs if p is not left]
    out = left.communicate()[0]
    assert left.returncode == 0, out
    assert "Trainer.fit" not in out and "epoch 0 step" not in out, out
    [run_dir] = run_dirs(tmp_path)
    assert (
        f"cnnlab: {run_dir} is being trained by process {owner.pid} on {os.uname()[1]} now; "
        "this call leaves that run to it, trains nothing and exits 0."
    ) in out, out
    # The dir Hydra made for the call that left is gone; the owner's is the only one.
    assert [d for d in run_dir.parent.iterdir()] == [run_dir]

    # The owner's output waited in its pipe: it is killed wherever it is by now, after step 25.
    kill_when_printed(owner, "epoch 0 step 25/")
    assert read_results(run_dir)["status"] == "running"  # its owner is dead, its lock free
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    continued = re.search(
        rf"cnnlab: continue {re.escape(str(run_dir))} from step (\d+)", again.stdout
    )
    assert continued and int(continued[1]) >= 20, again.stdout
    assert run_dirs(tmp_path) == [run_dir]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["resumed"] == [{"status": "running"}]
    steps = [int(r["step"]) for r in metrics_rows(run_dir) if r.get("train_loss_step")]
    assert steps == sorted(set(steps)) and steps[-1] >= 25  # each step once, to the end
