"""Progressive resizing: the training size per epoch, and the batches a module trains on."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from cnnlab.augment.resolution import ResolutionRamp
from cnnlab.config.schema import validate
from cnnlab.errors import CnnlabError
from cnnlab.training.run import build_module
from conftest import needs_fmnist


def test_the_size_holds_then_ramps_linearly_to_the_full_size():
    ramp = ResolutionRamp(min_size=16, max_size=28, start_epoch=2, end_epoch=5)
    assert [ramp.size(e) for e in range(8)] == [16, 16, 16, 20, 24, 28, 28, 28]
    # Rounded down to the multiple, never below min_size.
    odd = ResolutionRamp(min_size=13, max_size=28, end_epoch=3, multiple=8)
    assert [odd.size(e) for e in range(4)] == [13, 16, 16, 28]


def test_batches_are_resized_only_when_their_size_differs():
    ramp = ResolutionRamp(min_size=16, max_size=28, end_epoch=2)
    x = torch.rand(3, 1, 28, 28)
    assert ramp(x, 0).shape == (3, 1, 16, 16)
    assert ramp(x, 2) is x


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"min_size": 40, "end_epoch": 3}, "min_size=40"),
        ({"min_size": 0, "end_epoch": 3}, "min_size=0"),
        ({"min_size": 16, "start_epoch": 3, "end_epoch": 3}, "start_epoch=3"),
        ({"min_size": 16, "end_epoch": 3, "multiple": 0}, "multiple=0"),
    ],
)
def test_bad_ramps_are_named_with_what_is_accepted(options, named):
    with pytest.raises(CnnlabError, match=f"{named}.*expected"):
        ResolutionRamp(max_size=28, **options)


def test_unknown_or_missing_options_are_named():
    with pytest.raises(CnnlabError, match="min_sz.*accepted keys: min_size, start_epoch"):
        ResolutionRamp.of({"min_sz": 16, "end_epoch": 3}, 28)
    with pytest.raises(CnnlabError, match="expected min_size and end_epoch"):
        ResolutionRamp.of({"min_size": 16}, 28)
    assert ResolutionRamp.of({"min_size": 16, "end_epoch": 3}, 28).max_size == 28


@needs_fmnist
def test_a_module_trains_small_images_first_and_evaluates_at_full_size(compose_cfg):
    cfg = validate(
        compose_cfg(
            [
                "data.samples_per_class=5",
                "data.val_size=10",
                "module.progressive_resize={min_size: 16, end_epoch: 2}",
            ]
        )
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    module.train()
    assert module.on_after_batch_transfer(batch, 0)[0].shape[-2:] == (16, 16)
    module.eval()
    assert module.on_after_batch_transfer(batch, 0)[0].shape[-2:] == (28, 28)
