"""Composing the config ``cnnlab-train OVERRIDES`` would run, without starting a run: for the
commands and scripts that build a model or data set from the same overrides."""

from __future__ import annotations

import os
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab.config.schema import register, validate
from cnnlab.paths import config_dir


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
