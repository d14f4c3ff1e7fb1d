"""``cnnlab-train``: compose the config with Hydra, train, test, write results.json."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cnnlab.cli.common import exit_with
from cnnlab.config.job import in_multirun
from cnnlab.config.schema import register
from cnnlab.errors import CnnlabError
from cnnlab.paths import config_dir

register()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Here, not at the top: torch and Lightning take seconds to import, which --help, --cfg job
    # and Hydra's own config errors do without.
    from cnnlab.runs.sweep import job_failed
    from cnnlab.training.run import train

    try:
        results = train(cfg)
    except Exception as e:
        if in_multirun():
            job_failed(e)  # recorded in the job's run dir; the other jobs go on
            return None
        if isinstance(e, CnnlabError):
            exit_with(e)
        raise
    return results.get("best_val_acc")


if __name__ == "__main__":
    main()
