"""``cnnlab-train``: compose the config with Hydra, train, test, write results.json."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnlab.config import register
from cnnlab.errors import CnnlabError


def config_dir() -> str:
    """conf/ inside an installed wheel, else the repository's top-level conf/."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).parents[2] / "conf")


register()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from cnnlab.run import train
    from cnnlab.sweep import in_multirun, job_failed

    try:
        results = train(cfg)
    except Exception as e:
        if in_multirun():
            job_failed(e)  # recorded in the job's run dir; the other jobs go on
            return None
        if isinstance(e, CnnlabError):
            print(f"cnnlab: error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    return results.get("best_val_acc")


if __name__ == "__main__":
    main()
