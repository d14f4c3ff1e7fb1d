"""Composing the config ``cnnlab-train OVERRIDES`` would run, without starting a run: for the
commands and scripts that build a model or data set from the same overrides."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab.config.schema import register, validate
from cnnlab.errors import CnnlabError
from cnnlab.paths import config_dir

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def compose_config(overrides: Sequence[str], output_dir: str | None = None) -> DictConfig:
    """The validated, resolved config ``cnnlab-train OVERRIDES`` would run, composed without
    starting a run (nothing is written), with its run dir at ``output_dir`` (default: here)."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.output_dir = output_dir or os.getcwd()
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg)


def job_configs(
    overrides: Sequence[str], multirun: bool, resolve: bool = True
) -> Iterator[DictConfig]:
    """The config of each job ``cnnlab-train [-m] OVERRIDES`` would run, in Hydra's job order,
    each with its own Hydra runtime set while it is current (its job dir is
    ``paths.output_dir``), composed without starting anything: no dir is made, nothing written.
    A multirun's grid is expanded as Hydra's basic sweeper does it, ``hydra.sweeper.params``
    first; a sweeper that chooses its jobs as it goes (Optuna) is refused. ``resolve=False``
    leaves the interpolations in, as Hydra hands a job its config: what a run's config hash is
    computed from (resolved, the paths below ``paths`` are the job dir's, not placeholders), to
    be read while the job is current."""
    register()
    GlobalHydra.instance().clear()
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        base = compose("train", overrides=fixed, return_hydra_config=True)
        if not multirun:
            yield _job(base, None, resolve=resolve)
            return
        if base.hydra.sweeper._target_ != BASIC_SWEEPER:
            raise CnnlabError(
                f"--dry-run plans the jobs of a grid sweep, and hydra.sweeper is "
                f"{base.hydra.sweeper._target_}, which chooses its jobs as it goes (an Optuna "
                "search). Leave out hparams_search (and hydra/sweeper) to see the grid's plan."
            )
        params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
        # By key, as Hydra's basic sweeper does: a key given again (on the command line after
        # the sweep's params) takes the later values, in the earlier one's place.
        choices = {
            o.get_key_element(): [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            if o.is_sweep_override()
            else [o.input_line]
            for o in parser.parse_overrides([*params, *overrides])
        }
        sweep_dir = None  # resolved once, as Hydra does: ${now:} changes while jobs compose
        for num, job in enumerate(itertools.product(*choices.values())):
            cfg = compose("train", overrides=list(job), return_hydra_config=True)
            yield _job(cfg, num, sweep_dir, resolve)
            sweep_dir = HydraConfig.get().sweep.dir


def _job(
    cfg: DictConfig, num: int | None, sweep_dir: str | None = None, resolve: bool = True
) -> DictConfig:
    """``cfg`` without its Hydra node, which becomes the current Hydra config (job ``num`` of a
    multirun in ``sweep_dir``, default its own, or a single run when None) with its job dir as
    its runtime output dir, resolved as Hydra resolves them before a job starts."""
    with contextlib.ExitStack() as writable:
        # Hydra marks its nodes read-only; its launchers lift that as here to set a job's own.
        for node in (cfg.hydra, cfg.hydra.sweep, cfg.hydra.job, cfg.hydra.runtime):
            writable.enter_context(read_write(node))
        writable.enter_context(open_dict(cfg))
        cfg.hydra.runtime.cwd = os.getcwd()
        if num is not None:
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = num
            cfg.hydra.job.id = str(num)
        # The job dir's interpolations reach paths, which reach ${hydra:runtime.cwd}.
        HydraConfig.instance().set_config(cfg)
        sweep = cfg.hydra.sweep
        sweep.dir = sweep_dir or str(sweep.dir)
        job_dir = cfg.hydra.run.dir if num is None else Path(sweep.dir) / str(sweep.subdir)
        cfg.hydra.runtime.output_dir = os.path.abspath(job_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    if resolve:
        OmegaConf.resolve(cfg)  # now, while this job's Hydra config is the current one
    return cfg
