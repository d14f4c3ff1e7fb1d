"""``cnnlab-train``: compose the config with Hydra, train, test, write results.json."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cnnlab.cli.common import exit_with
from cnnlab.config.compose import job_configs
from cnnlab.config.job import in_multirun
from cnnlab.config.schema import register
from cnnlab.errors import CnnlabError
from cnnlab.paths import config_dir

register()

# Print what each job would do (train, skip, continue, retry) and do none of it. A flag, as a
# user expects of a dry run; Hydra's parser knows no such flag, so it is taken out of argv first.
DRY_RUN = "--dry-run"
MULTIRUN = ("-m", "--multirun")


def main() -> float | None:
    if DRY_RUN not in sys.argv[1:]:
        return train_task()
    args = [a for a in sys.argv[1:] if a != DRY_RUN]
    # Here, not at the top, for the reason given in train_task.
    from cnnlab.runs.planning import dry_run

    try:
        flags = [a for a in args if a.startswith("-") and a not in MULTIRUN]
        if flags:
            raise CnnlabError(
                f"{DRY_RUN} takes -m (--multirun) and overrides, not {' '.join(flags)}: it plans "
                "the jobs of the command without the dry run flag and prints what each would do."
            )
        multirun = any(a in MULTIRUN for a in args)
        overrides = [a for a in args if a not in MULTIRUN]
        # Unresolved, as Hydra hands a run its config: the config hash must be the run's.
        sys.exit(dry_run(job_configs(overrides, multirun, resolve=False)))
    except CnnlabError as e:
        exit_with(e)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def train_task(cfg: DictConfig) -> float | None:
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
