"""What every command-line entry point shares (the convention of :mod:`cnnlab.cli`): the
run-or-checkpoint argument, one way of reporting a user error and one of naming the files a
command wrote."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from cnnlab.errors import CnnlabError

USER_ERROR = 2  # as argparse exits for bad arguments


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="a run directory (its tested, best checkpoint) or a .ckpt file"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: a GPU if there is one)"
    )


def print_error(error: CnnlabError) -> None:
    print(f"cnnlab: error: {error}", file=sys.stderr)


def exit_with(error: CnnlabError) -> NoReturn:
    """End a Hydra-composed command (whose main returns no status) on a user error."""
    print_error(error)
    sys.exit(USER_ERROR)


def usage_error(prog: str, message: str) -> NoReturn:
    """A malformed argument, reported as argparse reports one, for a command that parses its
    arguments by hand."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(USER_ERROR)


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's main: a CnnlabError ends it with a one-paragraph message and exit status
    2, as in cnnlab-train, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except CnnlabError as e:
            print_error(e)
            return USER_ERROR

    return wrapper


def print_written(*paths: Path) -> None:
    """The files a command wrote, one path per line with nothing else on it, at the end of its
    output: ``cnnlab-eval RUN | tail -n 2`` gives them to a script."""
    for path in paths:
        print(path, flush=True)
