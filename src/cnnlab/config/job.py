"""What a Hydra job knows about itself: whether it is part of a multirun, its sweep, its place
and overrides in it. Below every other layer, as the config's own resolvers use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """The sweep's name (its directory's name) for a job of a multirun, None for a single run."""
    if not in_multirun():
        return None
    return Path(HydraConfig.get().sweep.dir).name


def job_name(name: str) -> str:
    """``name`` plus the job's overrides (``name[model=lenet5,seed=1]``) in a multirun, where
    every job shares the name; ``name`` alone for a single run."""
    if not in_multirun():
        return name
    overrides = HydraConfig.get().job.override_dirname
    return f"{name}[{overrides}]" if overrides else name


def job_info() -> dict[str, Any]:
    """The job's place in its sweep, for results.json; empty for a single run."""
    if not in_multirun():
        return {}
    job = HydraConfig.get().job
    return {"job": {"num": job.num, "overrides": job.override_dirname, "sweep": sweep_group()}}


def _hydra_job() -> tuple[bool, list[str]]:
    """(whether this job is part of a multirun, its command-line overrides)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, []
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN, list(hydra_cfg.overrides.task)
