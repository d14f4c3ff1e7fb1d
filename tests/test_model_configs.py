"""Every model config trains: a fast_dev_run of the real training code on real data."""

from __future__ import annotations

import math

import pytest
from hydra.utils import instantiate

from cnnlab.config import validate
from cnnlab.run import train
from conftest import CONF, needs_fmnist

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if not p.stem.startswith("cost_"))


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
