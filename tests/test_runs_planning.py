"""Skip/continue planning without training: runs.planning.plan over temporary run dirs with
hand-written results.json and checkpoint files (milliseconds each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.errors import CnnlabError
from cnnlab.runs import planning
from cnnlab.runs.lock import RunLock, is_locked
from cnnlab.runs.record import RunRecord, fingerprint
from test_runs_record import plain


def config(root: Path, **changes):
    return plain(paths__output_root=str(root), paths__output_dir=str(root / "new"), **changes)


def make_run(root: Path, name: str, status: str, cfg=None, step: int | None = None, **extra):
    """A run dir with its results.json and, with ``step``, a checkpoint at that step."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    cfg = config(root) if cfg is None else cfg
    record = {"status": status, "run_dir": str(run_dir), "config_hash": fingerprint(cfg), **extra}
    (run_dir / "results.json").write_text(json.dumps(record))
    if step is not None:
        save(run_dir / "checkpoints" / "last.ckpt", step, cfg)
    return run_dir


def save(path: Path, step: int, cfg) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"w": torch.zeros(4)}
    config = OmegaConf.to_container(cfg)
    torch.save({"global_step": step, "state_dict": state, "cnnlab": {"config": config}}, path)


def dead_pid() -> int:
    code = "import os; print(os.getpid())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def test_a_new_config_trains(tmp_path):
    make_run(tmp_path, "other", "completed", cfg=config(tmp_path, seed=9))
    job = planning.plan(config(tmp_path, resume="auto"), tmp_path / "new", True, [])
    assert job.action == planning.TRAIN and job.run_dir == tmp_path / "new"
    assert job.results.status == "running" and job.checkpoint is None


def test_a_multirun_skips_the_latest_completed_run_of_its_config(tmp_path):
    old = make_run(tmp_path, "a", "completed", test_acc=0.8)
    os.utime(old / "results.json", (1, 1))
    latest = make_run(tmp_path, "b", "completed", test_acc=0.9)
    make_run(tmp_path, "c", "skipped", same_as=str(old))  # a pointer: not a run of its own
    job = planning.plan(config(tmp_path), tmp_path / "new", True, [])
    assert job.action == planning.SKIP and job.same_as == latest and not job.in_place
    assert job.earlier["test_acc"] == 0.9
    # Not in a multirun, or with skip_completed=false, the config trains again.
    assert planning.plan(config(tmp_path), tmp_path / "new", False, []).action == planning.TRAIN
    no_skip = config(tmp_path, skip_completed=False)
    assert planning.plan(no_skip, tmp_path / "new", True, []).action == planning.TRAIN


def test_resume_auto_continues_an_interrupted_run_from_its_checkpoint(tmp_path):
    run_dir = make_run(tmp_path, "a", "interrupted", step=130, wall_time_s=5.0)
    cfg = config(tmp_path, resume="auto")
    job = planning.plan(cfg, tmp_path / "new", False, [])
    assert job.action == planning.CONTINUE and job.run_dir == run_dir
    assert job.checkpoint == str(run_dir / "checkpoints" / "last.ckpt")
    assert job.results.resumed == [{"status": "interrupted"}] and job.results.wall_time_s == 5.0
    assert job.config.paths.output_dir == str(run_dir) and job.pointer_dir == tmp_path / "new"
    assert job.describe() == f"continue {run_dir} from step 130"


def test_a_run_whose_owner_died_is_continued_one_that_lives_is_left_to_it(tmp_path):
    dead = make_run(tmp_path, "dead", "running", step=20, pid=dead_pid(), host=os.uname()[1])
    cfg = config(tmp_path, resume="auto")
    assert planning.plan(cfg, tmp_path / "new", False, []).run_dir == dead
    # The run's lock held (here by this process, through another file description).
    lock = RunLock(dead)
    assert lock.acquire() and is_locked(dead)
    job = planning.plan(cfg, tmp_path / "new", False, [])
    assert job.action == planning.BUSY and job.run_dir == dead
    assert f"process {os.getpid()}" in job.describe()
    lock.release()
    assert not is_locked(dead)


def test_a_run_killed_before_its_first_checkpoint_starts_again_in_its_dir(tmp_path):
    run_dir = make_run(tmp_path, "a", "running", pid=dead_pid(), host=os.uname()[1])
    job = planning.plan(config(tmp_path, resume="auto"), tmp_path / "new", False, [])
    assert job.action == planning.CONTINUE and job.run_dir == run_dir and job.checkpoint is None
    assert job.describe() == f"continue {run_dir} from step 0"


def test_in_place_completed_is_skipped_failed_retried_interrupted_continued(tmp_path):
    cfg = config(tmp_path)
    done = make_run(tmp_path, "0", "completed")
    job = planning.plan(cfg, done, True, [], RunRecord.read(done))
    assert job.action == planning.SKIP and job.in_place and job.run_dir == done

    failed = make_run(tmp_path, "1", "failed", step=40, error="OSError: disk full")
    job = planning.plan(cfg, failed, True, [], RunRecord.read(failed))
    assert job.action == planning.RETRY and job.run_dir == failed and job.pointer_dir is None
    assert job.results.resumed == [{"status": "failed", "error": "OSError: disk full"}]
    assert "error" not in job.results
    assert job.describe() == f"retry {failed} (it failed: OSError: disk full) from step 40"

    # A single run in a fixed hydra.run.dir continues in place under resume=auto only.
    stopped = make_run(tmp_path, "2", "interrupted", step=70)
    with pytest.raises(CnnlabError, match="already holds a run"):
        planning.plan(config(tmp_path), stopped, False, [], RunRecord.read(stopped))
    auto = config(tmp_path, resume="auto")
    job = planning.plan(auto, stopped, False, [], RunRecord.read(stopped))
    assert job.action == planning.CONTINUE and job.checkpoint.endswith("last.ckpt")


def test_a_dir_holding_another_configs_run_is_refused_naming_the_keys(tmp_path):
    other = config(tmp_path, seed=5, optimizer__lr=0.5)
    run_dir = make_run(tmp_path, "0", "completed", cfg=other, step=100)
    with pytest.raises(CnnlabError) as e:
        planning.plan(config(tmp_path), run_dir, True, [], RunRecord.read(run_dir))
    assert "it differs in optimizer.lr, seed" in str(e.value)


def test_a_truncated_last_checkpoint_falls_back_to_the_newest_whole_one(tmp_path, caplog):
    run_dir = make_run(tmp_path, "a", "interrupted", step=150)
    folder = run_dir / "checkpoints"
    save(folder / "best-epoch00.ckpt", 100, config(tmp_path))
    save(folder / "best-epoch01.ckpt", 200, config(tmp_path))
    (folder / "best-epoch01.ckpt").write_bytes((folder / "best-epoch01.ckpt").read_bytes()[:500])
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert planning.resume_checkpoint(run_dir, fallback=True) == str(folder / "best-epoch00.ckpt")
    assert f"{last} is not a whole checkpoint" in caplog.text
    with pytest.raises(CnnlabError, match=f"{last} is not a whole checkpoint"):
        planning.resume_checkpoint(run_dir, fallback=False)
    (folder / "best-epoch00.ckpt").unlink()
    with pytest.raises(CnnlabError, match="no other checkpoint of the run is whole"):
        planning.resume_checkpoint(run_dir, fallback=True)


def test_resume_dir_takes_non_identity_overrides_and_refuses_others(tmp_path):
    run_dir = make_run(tmp_path, "a", "interrupted", step=30)
    cfg = config(tmp_path, resume=str(run_dir), name="renamed", seed=7)
    with pytest.raises(CnnlabError) as e:
        planning.plan(cfg, tmp_path / "new", False, [f"resume={run_dir}", "name=x", "seed=7"])
    assert "seed (1 -> 7)" in str(e.value) and "name" not in str(e.value).split("trains:")[1][:30]
    # The same value as the run's own is no change; a name is no part of the identity.
    cfg = config(tmp_path, resume=str(run_dir), name="renamed")
    job = planning.plan(cfg, tmp_path / "new", False, [f"resume={run_dir}", "seed=1", "name=x"])
    assert job.action == planning.CONTINUE and job.config.name == "renamed"


def test_resume_dir_of_a_run_killed_during_start_up_says_so(tmp_path):
    killed = tmp_path / "killed"
    (killed / ".hydra").mkdir(parents=True)
    cfg = config(tmp_path, resume=str(killed))
    with pytest.raises(CnnlabError, match="killed during start-up"):
        planning.plan(cfg, tmp_path / "new", False, [f"resume={killed}"])
