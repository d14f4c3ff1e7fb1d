"""Test-time augmentation is one vocabulary: a run trained with ``eval.tta`` and cnnlab-eval,
-predict on it average the same views' probabilities, so eval reproduces the run's figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.augment.tta import tta_mode
from cnnlab.cli import evaluate, predict
from cnnlab.config.schema import TTAMode
from cnnlab.errors import CnnlabError
from cnnlab.inference.loading import load
from cnnlab.training.run import train
from conftest import needs_fmnist


def test_modes_are_the_schema_enum_and_flip_stands_for_hflip():
    assert [tta_mode(m.value) for m in TTAMode] == list(TTAMode)
    assert tta_mode("flip") is TTAMode.hflip
    with pytest.raises(CnnlabError, match=r"--tta='mirror'.*none, hflip, five_crop, ten_crop"):
        tta_mode("mirror", "--tta")


@needs_fmnist
def test_eval_reproduces_the_runs_test_acc_tta_and_takes_every_mode(compose_cfg, capsys):
    # Two classes: a 2,000-image test split, tested three times over (plain, two views).
    cfg = compose_cfg(["model=lenet5_modern", "data.classes=[1,9]", "data.samples_per_class=100",
                       "data.val_size=200", "data.batch_size=20", "trainer.max_epochs=1",
                       "eval.tta=hflip"])  # fmt: skip
    results = train(cfg)
    assert results["status"] == "completed"
    run_dir = Path(results["run_dir"])
    tested = Path(results["tested_checkpoint"])

    # No override: the run's own eval.tta, hence its own test_acc_tta, to the last bit.
    assert evaluate.main([str(run_dir)]) == 0
    own = json.loads(tested.with_name(tested.stem + ".eval.json").read_text())
    assert own["tta"] == "hflip"
    assert own["test_acc_tta"] == results["test_acc_tta"]
    assert own["test_acc"] == results["test_acc"]

    assert evaluate.main([str(run_dir), "eval.tta=ten_crop"]) == 0
    stem = evaluate.output_stem(tested, ["eval.tta=ten_crop"])
    ten = json.loads(stem.with_name(stem.name + ".json").read_text())
    assert ten["tta"] == "ten_crop" and 0.5 < ten["test_acc_tta"] <= 1.0
    assert ten["test_acc"] == results["test_acc"]
    assert ten["predictions"] != own["predictions"]

    capsys.readouterr()
    assert evaluate.main([str(run_dir), "eval.tta=mirror"]) == 2
    assert "eval.tta='mirror'" in capsys.readouterr().err

    # cnnlab-predict averages the same probabilities; flip is hflip.
    images = tested.parent / "images"
    images.mkdir()
    trained = load(run_dir, "cpu")
    test_images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    for i, image in enumerate(test_images):
        Image.fromarray(image[0].numpy()).save(images / f"{i}.png")
    expected = trained.probs(test_images, TTAMode.hflip)
    for tta in ("flip", "hflip"):
        assert predict.main([str(run_dir), str(images), "--tta", tta, "--json", "-k", "1"]) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        probs = torch.tensor([r["top"][0]["prob"] for r in rows])
        assert torch.allclose(probs, expected.max(1).values, atol=1e-6)
