"""Reproduce the source texts' ablations and write their measured tables into docs/ablations.md.

    python scripts/reproduce.py <name>... | all  [--scale ci|cpu|device|gpu] [--ci-size]
                                                 [--doc FILE]

See cnnlab.analysis.ablation (the runner) and cnnlab.cli.reproduce (this command); the claims are
the experiments under conf/experiment/ablation/.
"""

import sys

from cnnlab.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
