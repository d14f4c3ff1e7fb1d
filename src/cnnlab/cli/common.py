"""What every command-line entry point shares: the run-or-checkpoint argument and one way of
reporting a user error (a one-paragraph message and exit status 2)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from cnnlab.errors import CnnlabError


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="a run directory (its tested, best checkpoint) or a .ckpt file"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: a GPU if there is one)"
    )


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's main: a CnnlabError ends it with a one-paragraph message and exit status
    2, as in cnnlab-train, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except CnnlabError as e:
            print(f"cnnlab: error: {e}", file=sys.stderr)
            return 2

    return wrapper
