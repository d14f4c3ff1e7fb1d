"""Experiment loggers that need more than their constructor: W&B's automatic offline mode."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

WANDB_HOST = "api.wandb.ai"


def wandb_has_credentials() -> bool:
    """True if W&B can log in without asking: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, PermissionError):
        return False


def wandb_logger(
    project: str = "cnnlab",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
    save_dir: str = ".",
    mode: str = "auto",
    log_model: bool = False,
) -> WandbLogger:
    """A WandbLogger; ``mode=auto`` logs online with credentials and offline without them, so a
    run never stops at a login prompt. Offline runs upload later with ``wandb sync <dir>``."""
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode={mode!r}; use auto, online, offline or disabled")
    return WandbLogger(
        project=project,
        name=name,
        group=group,
        tags=list(tags or []),
        entity=entity,
        save_dir=save_dir,
        mode=mode,
        log_model=log_model,
    )


def finish_wandb(exit_code: int) -> None:
    """Close the W&B run if one was started, on success and failure alike."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
