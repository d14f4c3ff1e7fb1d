"""Composition of every config option, and the errors a user sees for bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from cnnlab.config.schema import validate
from cnnlab.errors import CnnlabError
from cnnlab.training.run import train
from conftest import CONF, run_cli

GROUPS = [
    p.name
    for p in sorted(CONF.iterdir())
    if p.is_dir() and p.name not in ("hydra",) and any(p.glob("*.yaml"))
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_an_option():
    expected = {
        "model", "data", "augmentation", "transfer", "optimizer", "scheduler", "trainer",
        "logger", "callbacks", "paths", "experiment", "debug",
    }  # fmt: skip
    assert expected <= set(GROUPS)
    assert (CONF / "hydra" / "default.yaml").is_file()


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_option_composes_and_validates(compose_cfg, image_tree, group, option):
    # The data options whose source the user must name: a tree of images, a folder of shards
    # (which cnnlab-shards writes; composing reads neither).
    extra = {
        "image_folder": [f"data.root={image_tree}"],
        "shards": [f"data.input_dir={image_tree}", "data.num_classes=3"],
    }.get(option, [])
    cfg = validate(compose_cfg([f"{group}={option}", *extra]))
    assert cfg.data.num_classes >= 2
    # Each model config's forward pass and training step: tests/test_model_configs.py.
    assert cfg.model._target_


def test_image_folder_counts_classes_from_the_tree(compose_cfg, image_tree):
    cfg = validate(compose_cfg(["data=image_folder", f"data.root={image_tree}"]))
    assert cfg.data.num_classes == 3
    assert cfg.model.num_classes == 3 and cfg.model.in_chans == 3


def _error_text(compose_cfg, overrides: list[str]) -> str:
    """The message a user would read for ``overrides``: from composing, validating, or building
    the run (Hydra chains the details of a bad override as the exception's cause)."""
    with pytest.raises(Exception) as info:  # noqa: B017 (which type depends on the stage)
        train(compose_cfg([*overrides, "debug=fdr"]))
    error = info.value
    if isinstance(error, ConfigCompositionException):
        return f"{error} {error.__cause__}"
    assert isinstance(error, CnnlabError), repr(error)
    return str(error)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        # Misspelt key of a schema group: Hydra names it and says how to add keys.
        (["optimizer.lrr=0.1"], ["optimizer.lrr", "+optimizer.lrr"]),
        # Added key that the optimizer class does not take: its accepted arguments are listed.
        (["+optimizer.lrr=0.1"], ["optimizer.lrr", "torch.optim.SGD", "momentum, dampening"]),
        (["scheduler=exponential", "+scheduler.gama=0.9"], ["scheduler.gama", "gamma"]),
        (["scheduler.interval=batch"], ["scheduler.interval", "batch", "step", "epoch"]),
        # A value the class itself refuses, in its own words.
        (["scheduler=plateau", "scheduler.mode=low"], ["ReduceLROnPlateau", "mode=low", "unknown"]),
        (["scheduler.length_arg=T_maxx"], ["T_maxx", "T_max"]),
        # Wrong type for a Trainer argument (schema derived from Lightning's signature).
        (["trainer.max_epochs=three"], ["trainer.max_epochs", "three"]),
        # An enum-valued key lists what it accepts.
        (["transfer.strategy=tune"], ["tune", "finetune", "scratch"]),
        # Unknown option of a group lists the valid options.
        (["model=resnet_huge"], ["resnet_huge", "resnet_small", "resnet20"]),
        # Arguments of _target_ classes are checked against their signatures.
        (["+model.widht=8"], ["model.widht", "widths", "cnnlab.models.resnet.ResNet"]),
        (["model.stem_pool=maybe"], ["model.stem_pool", "maybe"]),
        (["data.batch_size=big"], ["data.batch_size", "big"]),
        # An error raised inside a model constructor reaches the user the same way.
        (["model=torchvision", "model.name=resnet181"], ["resnet181", "Close matches: resnet18"]),
    ],
)
def test_bad_config_names_the_bad_value(compose_cfg, overrides, expected):
    text = _error_text(compose_cfg, overrides)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in: {text}"


@pytest.mark.parametrize(
    "override,code,expected",
    [
        ("model=resnet_huge", 1, ["Available options in 'model'", "resnet_small"]),
        ("+model.widht=8", 2, ["cnnlab: error: Bad config value model.widht", "widths"]),
    ],
)
def test_command_line_error_is_one_paragraph_and_an_exit_code(tmp_path, override, code, expected):
    proc = run_cli([override, "debug=fdr"], cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert not list(tmp_path.rglob("*.ckpt"))


def test_printing_the_config_imports_neither_torch_nor_lightning(tmp_path):
    # `cnnlab-train --cfg job` and `--help` should answer in well under 2 s: importing torch and
    # Lightning alone takes several seconds on a 2-core machine.
    code = (
        "import sys; sys.argv = ['cnnlab-train', '--cfg', 'job']\n"
        "from cnnlab.cli.train import main\n"
        "main()\n"
        "print('heavy:', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "model:" in proc.stdout
    assert "heavy: []" in proc.stdout, proc.stdout


def test_trainer_arguments_read_from_source_match_lightnings_signature():
    from cnnlab.config.schema import _composable_trainer_schema, trainer_schema

    read = {f.name: f.default for f in dataclasses.fields(_composable_trainer_schema())}
    real = {f.name: f.default for f in dataclasses.fields(trainer_schema())}
    assert read == real
