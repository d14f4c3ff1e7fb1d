"""Class imbalance: inverse-frequency class weights, the balanced sampler and macro metrics, on a
deliberately imbalanced Fashion-MNIST subset (1000 / 100 / 10 training images of three classes)."""

from __future__ import annotations

import pytest
import torch

from cnnlab.training.module import inverse_frequency
from cnnlab.training.run import train
from conftest import needs_fmnist

IMBALANCED = [
    "model=lenet5_modern",
    "data.classes=[0,1,2]",  # T-shirt, Trouser, Pullover
    "data.samples_per_class=[1000,100,10]",
    "data.val_size=500",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "optimizer.lr=0.05",
]


def test_inverse_frequency_weights_average_one_over_the_images():
    counts = torch.tensor([1000, 100, 10, 0])
    weights = inverse_frequency(counts)
    assert torch.allclose((weights * counts).sum() / counts.sum(), torch.tensor(1.0))
    assert weights[3] == 0 and torch.allclose(weights[2] / weights[0], torch.tensor(100.0))


@pytest.mark.heavy
@needs_fmnist
def test_class_weights_lift_the_rare_class(compose_cfg, tmp_path):
    plain = train(compose_cfg(IMBALANCED))
    # Weights or the balanced sampler, not both: together they correct twice (BENCHMARKS.md).
    cfg = compose_cfg([*IMBALANCED, "module.class_weights=auto"])
    cfg.paths.output_dir = str(tmp_path / "weighted")
    balanced = train(cfg)
    for results in (plain, balanced):
        assert results["status"] == "completed"
        for key in ("test_acc", "test_acc_macro", "test_precision_macro", "test_recall_macro",
                    "test_f1_macro"):  # fmt: skip
            assert 0.0 <= results[key] <= 1.0
    # Ten pullovers among 1,110 images: the plain run all but ignores them.
    rare = "Pullover"
    assert balanced["per_class_acc"][rare] > plain["per_class_acc"][rare] + 0.2
    assert balanced["test_f1_macro"] > plain["test_f1_macro"]


@needs_fmnist
def test_bad_class_weights_are_named(compose_cfg):
    with pytest.raises(Exception, match=r"module.class_weights=\[1, 2\]: expected null, auto"):
        train(compose_cfg([*IMBALANCED, "module.class_weights=[1,2]"]))
