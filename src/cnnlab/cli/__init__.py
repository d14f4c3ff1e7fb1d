"""The console scripts: each module's ``main`` is one command of ``[project.scripts]``; nothing in
cnnlab imports this package.

One convention for all of them:

- **Arguments.** The commands that compose a config (``cnnlab-train``, ``cnnlab-show-aug``,
  ``cnnlab-summary``) take Hydra overrides, ``group=option`` and ``key=value``. The commands
  that use trained runs or their results (``cnnlab-eval``, ``-predict``, ``-export``,
  ``-explain``, ``-compare``, ``-ensemble``) take argparse arguments, the run directory or
  checkpoint first (:func:`cnnlab.cli.common.add_common_arguments`); those that re-read a
  run's config take its keys as ``key=value`` too (``cnnlab-eval RUN eval.tta=ten_crop``).
  Test-time augmentation is named alike everywhere: ``none|hflip|five_crop|ten_crop|multiscale``
  (cnnlab.augment.tta), defaulting to the run's own ``eval.tta``. Every command answers
  ``--help``.
- **Errors.** A user error (a bad value, a missing file, a run that does not fit) is a
  :class:`cnnlab.errors.CnnlabError`: one paragraph on stderr, ``cnnlab: error: <message>``,
  naming the bad value and what is accepted, and exit status 2, with no traceback (the
  :func:`cnnlab.cli.common.command` wrapper; :func:`cnnlab.cli.common.exit_with` in Hydra's
  task functions). A malformed argument is reported as argparse does, ``usage`` and
  ``<prog>: error: <message>``, also with status 2 (:func:`cnnlab.cli.common.usage_error` for
  ``cnnlab-summary``, which parses its arguments by hand). Anything else is a bug and keeps its
  traceback.
- **Output paths.** A command that writes files ends its output with their paths, one per line
  with nothing else on it (:func:`cnnlab.cli.common.print_written`), so that a script takes them
  with ``tail``. ``cnnlab-train`` writes a whole run directory, named on the results table's last
  line (``run_dir: <path>``).
"""
