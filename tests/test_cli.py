"""The console scripts' shared convention (cnnlab.cli): every one answers --help, reports a user
error as one ``cnnlab: error:`` paragraph with exit status 2, and ends with the paths it wrote."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from cnnlab.cli import common
from cnnlab.errors import CnnlabError
from conftest import CONF

# tomllib is Python 3.11's; [project.scripts] is simple enough to read with a pattern.
_PYPROJECT = (CONF.parent / "pyproject.toml").read_text()
SCRIPTS = dict(
    re.findall(r'^(cnnlab-[\w-]+) = "([\w.:]+)"$', _PYPROJECT.split("[project.scripts]")[1], re.M)
)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_answers_help(name, monkeypatch, capsys):
    module, _, attr = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), attr)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    GlobalHydra.instance().clear()
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    assert code in (0, None)
    assert len(capsys.readouterr().out.splitlines()) > 3


def test_user_errors_and_written_paths_have_one_format(tmp_path, capsys):
    @common.command
    def main(argv):
        raise CnnlabError(f"--thing {argv[0]!r}: expected a or b.")

    assert main(["c"]) == 2
    assert capsys.readouterr().err == "cnnlab: error: --thing 'c': expected a or b.\n"
    with pytest.raises(SystemExit) as exit_info:
        common.usage_error("cnnlab-x", "bad\n   shape")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "cnnlab-x: error: bad shape\n"
    common.print_written(tmp_path / "a.json", tmp_path / "b.png")
    assert capsys.readouterr().out.splitlines() == [
        str(tmp_path / "a.json"),
        str(tmp_path / "b.png"),
    ]
