"""One set of defaults: every default of the config schemas is the one conf/train.yaml composes,
so that what the schema says and what users get never part."""

from __future__ import annotations

import dataclasses
import enum

import pytest
from omegaconf import OmegaConf

from cnnlab.config.schema import train_schema

# Groups whose schema is a library's signature (the Trainer's: conf/trainer sets cnnlab's own
# choices on top of Lightning's defaults) or a class's own (a _target_ node), or MISSING paths.
NOT_CNNLAB_DEFAULTS = {
    *("trainer", "paths", "model", "data", "augmentation", "logger", "callbacks"),
    *("optimizer", "scheduler"),
}


def schema_defaults(schema: type) -> dict:
    out = {}
    for f in dataclasses.fields(schema):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[f.name] = value
    return out


def plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "key",
    [f.name for f in dataclasses.fields(train_schema()) if f.name not in NOT_CNNLAB_DEFAULTS],
)
def test_schema_default_is_the_composed_default(compose_cfg, key):
    composed = OmegaConf.to_container(compose_cfg([]), resolve=False, enum_to_str=True)
    assert plain(schema_defaults(train_schema())[key]) == composed[key]
