"""The convergence rule on pure data: loss curves that flattened and that did not, the accuracy
ceiling, runs too short for a last fifth, and the bad thresholds that the config refuses; and
the probe it is measured on."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import OmegaConf
from torch import nn

from cnnlab.config.schema import validate
from cnnlab.data.spec import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.training.convergence import epochs_read, judge, planned_epochs
from cnnlab.training.module import ClassificationModule, epochs_ahead
from conftest import CONF

RULE = {"num_classes": 10, "loss_drop": 0.02, "acc_ceiling": 0.995, "above_chance": 0.1}


def test_a_flattened_loss_has_converged():
    # Ten epochs: the last fifth is epochs 8-9, judged against epoch 7 (0.500).
    losses = [2.3, 1.5, 1.0, 0.8, 0.65, 0.56, 0.52, 0.500, 0.495, 0.492]
    judged = judge(losses, 0.83, **RULE)
    assert judged["converged"]
    figures = judged["convergence"]
    assert figures["relative_loss_drop"] == pytest.approx((0.500 - 0.492) / 0.500)
    assert figures["epochs"] == 10 and figures["window_epochs"] == 2
    assert figures["loss_drop"] == 0.02 and figures["acc_ceiling"] == 0.995
    assert figures["last_train_acc"] == 0.83
    assert "less than 2.00%" in figures["reason"]


def test_a_loss_still_falling_has_not_converged():
    losses = [2.3, 1.8, 1.4, 1.1, 0.9, 0.75, 0.62, 0.52, 0.45, 0.40]
    judged = judge(losses, 0.85, **RULE)
    assert not judged["converged"]
    assert judged["convergence"]["relative_loss_drop"] == pytest.approx((0.52 - 0.40) / 0.52)
    assert "still falling" in judged["convergence"]["reason"]
    # A looser rule takes the same curve as flat.
    assert judge(losses, 0.85, **{**RULE, "loss_drop": 0.25})["converged"]


def test_a_noisy_last_epoch_does_not_hide_a_loss_still_falling():
    # Twenty epochs: the window is epochs 16-19, read with epoch 15. Falling 0.02 an epoch, and
    # the last epoch jumped back above where the window started.
    head = [2.0 - 0.1 * i for i in range(15)]
    falling = [*head, 0.60, 0.58, 0.56, 0.54, 0.63]
    judged = judge(falling, 0.8, **RULE)
    assert not judged["converged"]
    assert judged["convergence"]["relative_loss_drop"] == pytest.approx(0.08 / 0.60)
    # A loss that rose over the whole window had stopped falling: flat.
    rising = [*head, 0.60, 0.61, 0.62, 0.62, 0.63]
    judged = judge(rising, 0.8, **RULE)
    assert judged["converged"] and judged["convergence"]["relative_loss_drop"] < 0


def test_noise_alone_is_no_fall():
    """A flat loss whose epochs are noisy (one batch an epoch, as claim 9's feature extraction on
    20 images per class has) has converged: the least of many noisy epochs lies below their
    level, so the window's minimum against the epoch before it would read a fall of 5% here."""
    noise = [0.02, -0.03, 0.01, 0.04, -0.04, 0.00, 0.03, -0.02, 0.01, -0.01]
    flat = [2.3, 1.2, 0.9, 0.7, 0.6, *(0.5 * (1 + e) for e in noise * 5)]
    judged = judge(flat, 0.9, **RULE)
    assert judged["converged"], judged["convergence"]["reason"]
    assert judged["convergence"]["relative_loss_drop"] < 0.02
    window = len(flat) // 5
    before = flat[-window - 1]
    assert (before - min(flat[-window:])) / before > 0.045
    # The same noise on a loss that falls 1% of its level an epoch is still seen falling.
    sloped = [*flat[:5], *(x * (1 - 0.01 * i) for i, x in enumerate(flat[5:]))]
    assert not judge(sloped, 0.9, **RULE)["converged"]


def test_the_fall_is_reported_with_its_noise_and_a_noise_above_the_threshold_is_named():
    """Noise of 2.5% of the level an epoch, as the epoch losses of 1,000 images have (plain-20:
    0.18-0.23 at a hundredth of the peak LR), over a window of 8: the fall's standard error is
    about 4%, and a smooth line's is nil."""
    noise = [0.025, -0.025, 0.0, 0.025, -0.025, 0.0, 0.025, -0.025, 0.0]
    noisy = [1.0, 0.8, 0.7, 0.6, 0.5, 0.45, *(0.4 * (1 + e) for e in noise * 4)]
    figures = judge(noisy, 0.9, **RULE)["convergence"]
    assert 0.03 < figures["fall_noise"] < 0.05
    sloped = [*noisy[:6], *(x * (1 - 0.01 * i) for i, x in enumerate(noisy[6:]))]
    figures = judge(sloped, 0.9, **{**RULE, "loss_drop": 0.005})["convergence"]
    assert "its noise is larger than the 0.50% the rule must resolve" in figures["reason"]
    smooth = judge([1.0 - 0.01 * i for i in range(20)], 0.9, **RULE)["convergence"]
    assert smooth["fall_noise"] == pytest.approx(0.0, abs=1e-12)
    assert "noise 0.00%" in smooth["reason"]
    # Twelve epochs: a window of 2 and the epoch before it, too few points to show the noise.
    short = judge([1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.48, 0.46, 0.45, 0.44, 0.42, 0.43], 0.9, **RULE)
    assert short["convergence"]["fall_noise"] is None
    assert "noise unknown" in short["convergence"]["reason"]


def test_the_accuracy_ceiling_converges_a_loss_still_falling():
    losses = [0.5, 0.2, 0.1, 0.05, 0.03, 0.02, 0.012, 0.008, 0.005, 0.003]
    assert not judge(losses, 0.990, **RULE)["converged"]
    judged = judge(losses, 0.996, **RULE)
    assert judged["converged"] and "reached the ceiling" in judged["convergence"]["reason"]


def test_a_run_too_short_for_a_last_fifth_converges_only_at_the_ceiling():
    """Four epochs have no last fifth (4 // 5 = 0 epochs): the loss criterion cannot be judged,
    so such a run has converged only if its training accuracy reached the ceiling; five epochs
    are the shortest run the loss criterion judges (its last epoch against the fourth)."""
    short = [2.3, 1.0, 0.99, 0.989]
    judged = judge(short, 0.9, **RULE)
    assert not judged["converged"]
    assert judged["convergence"]["relative_loss_drop"] is None
    assert judged["convergence"]["window_epochs"] == 0
    assert "4 epoch(s): too short for a last fifth" in judged["convergence"]["reason"]
    assert judge(short, 1.0, **RULE)["converged"]
    assert not judge([], None, **RULE)["converged"]
    five = judge([*short, 0.988], 0.9, **RULE)
    assert five["converged"] and five["convergence"]["window_epochs"] == 1


def test_a_network_stuck_at_chance_has_not_converged():
    # A naive GoogLeNet of the bottleneck claim: flat at ln(10) with 10% training accuracy.
    stuck = [2.31, 2.303, 2.303, 2.302, 2.302, 2.302, 2.302, 2.302, 2.302, 2.302]
    judged = judge(stuck, 0.101, **RULE)
    assert not judged["converged"]
    assert judged["convergence"]["relative_loss_drop"] < 0.02
    assert judged["convergence"]["chance_floor"] == pytest.approx(0.2)
    assert "not trained" in judged["convergence"]["reason"]
    # The floor is chance (1 / classes) plus the margin: two classes need 60%.
    assert not judge(stuck, 0.59, **{**RULE, "num_classes": 2})["converged"]
    assert judge(stuck, 0.61, **{**RULE, "num_classes": 2})["converged"]
    # Without a logged training accuracy nothing shows that it trained.
    assert not judge(stuck, None, **RULE)["converged"]


def test_a_non_finite_loss_never_converged():
    losses = [2.3, 1.0, 0.9, 0.8, 0.7, math.nan]
    judged = judge(losses, 1.0, **RULE)
    assert not judged["converged"] and judged["convergence"]["relative_loss_drop"] is None


@pytest.mark.parametrize(
    "override",
    [
        "convergence.loss_drop=0",
        "convergence.acc_ceiling=1.5",
        "convergence.loss_drop=-1",
        "convergence.above_chance=0",
    ],
)
def test_bad_thresholds_are_refused_with_what_is_accepted(compose_cfg, override):
    key = override.split("=")[0]
    with pytest.raises(CnnlabError, match=rf"{key}=.* is not a fraction in \(0, 1\]"):
        validate(compose_cfg([override]))


def _probed_module() -> ClassificationModule:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 10),
    )
    module = ClassificationModule(
        model,
        DataSpec(num_classes=10, channels=1, image_size=12, mean=(0.5,), std=(0.25,)),
        optimizer=OmegaConf.load(CONF / "optimizer" / "sgd.yaml"),
        scheduler=OmegaConf.load(CONF / "scheduler" / "none.yaml"),
        probe_images=300,
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 12, 12), dtype=torch.uint8, generator=generator)
    module.probe_batch = images, torch.randint(0, 10, (300,), generator=generator)
    return module


def test_the_probe_is_the_training_images_fit_in_inference_mode_and_changes_nothing():
    module = _probed_module().train()
    module.model[1].eval()  # a frozen BatchNorm, as the transfer strategies keep it
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    loss, acc = module.evaluate_probe()
    # In inference mode: the same figures twice (no dropout, running BatchNorm statistics) and
    # those of the eval-mode network on the preprocessed images, in chunks or not.
    assert module.evaluate_probe() == (loss, acc)
    images, labels = module.probe_batch
    with torch.no_grad():
        x, _ = module.on_after_batch_transfer((images, labels), 0)
        logits = copy.deepcopy(module.model).eval()(x)
    assert loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    # Each module's mode is back, nothing learnt or counted, no random number drawn.
    assert module.training and module.model[5].training and not module.model[1].training
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_probe_runs_on_the_rules_epochs_unless_the_run_may_end_early(tmp_path):
    # The rule reads the last fifth and the epoch before it: 9 of 40 epochs, 1 of 4.
    assert [epochs_read(n) for n in (40, 20, 8, 4, 1)] == [9, 5, 2, 1, 1]
    # A step budget ends the run in the epoch of its last step (claim 9: 400 epochs of one batch).
    assert planned_epochs(40, None, 30) == planned_epochs(40, -1, math.inf) == 40
    assert planned_epochs(-1, 400, 1) == 400
    assert planned_epochs(40, 500, 8) == 40 and planned_epochs(40, 500, 23) == 22
    # Epochs of unknown length under a step budget, or no limit at all: not known.
    assert planned_epochs(-1, 500, math.inf) is None and planned_epochs(None, None, 10) is None
    quiet = {"logger": False, "enable_checkpointing": False, "default_root_dir": tmp_path}
    # Whichever epoch these callbacks end a run in must have been probed: every epoch is.
    assert epochs_ahead(L.Trainer(max_epochs=40, max_time={"minutes": 5}, **quiet)) is None
    stop = EarlyStopping("val_loss", patience=3)
    assert epochs_ahead(L.Trainer(max_epochs=40, callbacks=[stop], **quiet)) is None


def test_a_negative_probe_size_is_refused_with_what_is_accepted(compose_cfg):
    with pytest.raises(CnnlabError, match=r"probe_images=-1 is negative.*or 0 to judge"):
        validate(compose_cfg(["convergence.probe_images=-1"]))
