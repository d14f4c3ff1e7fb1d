"""Every model config trains: a fast_dev_run of the real training code on real data."""

from __future__ import annotations

import math

import pytest
from hydra.utils import instantiate

from cnnlab.config.schema import validate
from cnnlab.training.run import train
from conftest import CONF, needs_fmnist

# Larger siblings of a config whose code path they share (same classes, more or wider layers).
# Their fast_dev_runs take minutes on a 2-core CPU: `make test-all` runs them, `make test` not.
SCALED_SIBLINGS = {
    *(f"efficientnet_b{i}" for i in range(1, 8)),  # efficientnet_b0
    "resnet101", "resnet152",  # resnet50
    "resnet32", "resnet44", "resnet56", "resnet110",  # resnet20
    "plain56",  # plain20
    "vgg13", "vgg16", "vgg19", "vgg16_bn",  # vgg11, vgg11_bn
    "vgg16_fcn",  # vgg16 with the head whose outputs tests/test_models_classic.py checks
}  # fmt: skip
# model=torchvision and model=timm with ImageNet weights, whose loading tests/test_transfer.py
# checks on real photos; their fast_dev_runs take 9-15 s on a 2-core CPU.
PRETRAINED_VARIANTS = {"mobilenet_v2_imagenet", "efficientnet_lite0_imagenet"}
# Configs whose code path make ablations-ci trains (CI runs it after make test): vgg11_bn in the
# dropout claim, the naive inception modules in the bottleneck claim; 11-12 s each here.
TRAINED_BY_ABLATIONS = {"vgg11_bn", "googlenet_naive"}
MODELS = [
    pytest.param(name, marks=pytest.mark.heavy)
    if name in SCALED_SIBLINGS | PRETRAINED_VARIANTS | TRAINED_BY_ABLATIONS
    else name
    for name in sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    if not name.startswith("cost_")  # layers from the source texts' cost arithmetic
]


def test_siblings_are_real_configs():
    names = {p.stem for p in (CONF / "model").glob("*.yaml")}
    assert names >= SCALED_SIBLINGS | PRETRAINED_VARIANTS | TRAINED_BY_ABLATIONS


@needs_fmnist
@pytest.mark.parametrize("model", MODELS)
def test_model_config_runs_fast_dev_run(compose_cfg, model):
    probe = instantiate(validate(compose_cfg([f"model={model}"])).model)
    size = max(28, getattr(probe, "min_input_size", 28))
    cfg = compose_cfg(
        [
            f"model={model}",
            "debug=fdr",
            f"data.image_size={size}",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "data.samples_per_class=2",
        ]
    )
    results = train(cfg)
    assert results["status"] == "completed", results.get("error")
    assert results["params"] == sum(p.numel() for p in probe.parameters())
    assert math.isfinite(results["test_loss"])
    assert 0.0 <= results["test_acc"] <= 1.0
