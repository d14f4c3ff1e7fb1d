"""Shared helpers: running the real command line, and composing configs in-process."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from cnnlab.config.schema import register
from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.paths import config_dir

CONF = Path(config_dir())


def fashion_mnist_available() -> bool:
    try:
        FashionMNIST(root=None, download=False).locate()
    except Exception:
        return False
    return True


needs_fmnist = pytest.mark.skipif(
    not fashion_mnist_available() and os.environ.get("CI") != "true",
    reason="Fashion-MNIST not installed (make data installs it)",
)


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600):
    """Run ``python -m cnnlab.cli.train ARGS`` in ``cwd`` the way a user would; return the
    process.
    ``env`` adds variables to the environment; a value of None removes one."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": None, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None unsets a variable
    return subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.train", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wandb_sync_dry_run(cwd: Path, pattern: str) -> str:
    """What ``wandb sync PATTERN``, typed in a shell in ``cwd`` as the README writes it, would
    upload: the wandb command lists the offline runs it found and sends nothing."""
    wandb = shlex.quote(str(Path(sys.executable).with_name("wandb")))
    proc = subprocess.run(
        f"{wandb} sync --dry-run {pattern}",
        shell=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").rglob("results.json"))


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def compose_cfg(tmp_path):
    """compose(overrides) -> the config cnnlab-train would run, with Hydra's runtime set."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):

        def _compose(overrides: list[str] | None = None, hydra: bool = False):
            """``hydra``: keep Hydra's node (the launcher, the sweeper), which a task function
            never sees."""
            cfg = compose("train", overrides=overrides or [], return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.runtime.output_dir = str(tmp_path / "run")
                cfg.hydra.runtime.cwd = str(tmp_path)
            HydraConfig.instance().set_config(cfg)
            if not hydra:
                with open_dict(cfg):
                    del cfg["hydra"]
            return cfg

        yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    """A real image-folder tree: 3 classes x 40 PNGs cut from Fashion-MNIST's test images
    (T-shirt, Trouser, Bag), in colour mode RGB so that channel handling is exercised."""
    from PIL import Image

    from cnnlab.data.idx import read_idx

    root = tmp_path_factory.mktemp("image_tree")
    files = FashionMNIST(root=None, download=False).locate()
    images, labels = read_idx(files["test_images"]), read_idx(files["test_labels"])
    for name, label in (("tshirt", 0), ("trouser", 1), ("bag", 8)):
        (root / name).mkdir()
        picks = (labels == label).nonzero().flatten()[:40]
        for i, idx in enumerate(picks.tolist()):
            Image.fromarray(images[idx].numpy()).convert("RGB").save(root / name / f"{i:03d}.png")
    return root
