"""Training with every augmentation, per-sample augmentation, test-time augmentation, the other
data sets and a damaged image folder: each a fast_dev_run on a small real subset."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.augment.pipeline import PerSample
from cnnlab.training.run import train
from conftest import CONF, needs_fmnist
from test_datasets import messy_tree, needs_animals  # noqa: F401  (a fixture, used by name)

SMALL = ["debug=fdr", "data.samples_per_class=10", "data.batch_size=32", "data.eval_batch_size=64"]
EVERY_AUGMENTATION = sorted(p.stem for p in (CONF / "augmentation").glob("*.yaml"))


@needs_fmnist
def test_every_augmentation_composed_trains_with_ten_crop_tta(compose_cfg):
    cfg = compose_cfg([*SMALL, f"augmentation=[{','.join(EVERY_AUGMENTATION)}]",
                       "eval.tta=ten_crop"])  # fmt: skip
    assert len(cfg.augmentation.ops) >= 18
    results = train(cfg)
    assert results["status"] == "completed"
    assert 0.0 <= results["test_acc_tta"] <= 1.0 and "test_acc" in results


@needs_fmnist
def test_per_sample_augmentation_runs_in_the_dataloader(compose_cfg):
    cfg = compose_cfg([*SMALL, "augmentation=[basic,mixup]", "augmentation.where=per_sample"])
    assert train(cfg)["status"] == "completed"
    from hydra.utils import instantiate

    from cnnlab.augment.pipeline import as_augmentation

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    augmentation = as_augmentation(instantiate(cfg.augmentation))
    augmentation.prepare(datamodule)
    assert isinstance(datamodule.train_set.transform, PerSample)
    torch.manual_seed(0)
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (32, 1, 28, 28) and y.dtype == torch.long
    stored = datamodule.train_set.images
    assert not all((stored == image).all((1, 2, 3)).any() for image in x)  # some were moved


@needs_animals
def test_animal_mnist_with_a_class_filter_trains(compose_cfg):
    cfg = compose_cfg(["data=animal_mnist", "data.classes=[0,1,2,3,4]", *SMALL, "data.root=" +
                       str(CONF.parent / "data"), "augmentation=alexnet"])  # fmt: skip
    assert cfg.data.num_classes == 5 and cfg.model.num_classes == 5
    results = train(cfg)
    assert results["status"] == "completed"
    assert results["class_names"] == ["Bear", "Bird", "Cat", "Cow", "Dog"]
    assert len(results["confusion_matrix"]) == 5


def test_damaged_image_folder_trains_and_lists_skipped_files(compose_cfg, messy_tree, caplog):  # noqa: F811
    cfg = compose_cfg(["data=image_folder", f"data.root={messy_tree}", "data.image_size=28",
                       "data.num_workers=0", "debug=fdr", "augmentation=basic"])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        results = train(cfg)
    assert results["status"] == "completed"
    assert "bag/000.png" in caplog.text and "trouser/notes.png" in caplog.text
    assert sorted(Path(p).name for p in results["skipped_files"]) == ["000.png", "notes.png"]


@needs_fmnist
def test_show_aug_writes_a_png_grid(tmp_path, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from cnnlab.cli.show_aug import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnnlab-show-aug", "augmentation=[alexnet,cutmix]",
                                      "data.samples_per_class=10"])  # fmt: skip
    GlobalHydra.instance().clear()
    main()
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith("augmentation.png") and str(tmp_path) in path
    with Image.open(path) as grid:  # 5 rows (originals + 4 augmented) of 8 images, 28 px each
        assert grid.size == (8 * 30 + 2, 5 * 30 + 2)
        pixels = torch.from_numpy(np.asarray(grid.convert("L"))).float()
    rows = [pixels[2 + 30 * r : 30 * (r + 1), 2:] for r in range(5)]
    assert all((rows[0] - row).abs().mean() > 1 for row in rows[1:])  # augmented rows differ
