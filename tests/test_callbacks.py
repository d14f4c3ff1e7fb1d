"""Optional callbacks of the callbacks group, in real short runs."""

from __future__ import annotations

import pytest

from cnnlab.training.run import train
from conftest import needs_fmnist


@pytest.mark.heavy
@needs_fmnist
def test_early_stopping_ends_a_run_that_stops_improving(compose_cfg):
    """A learning rate of zero: val_acc never improves on the first epoch's, so with patience
    1 the run stops after its second epoch of ten."""
    cfg = compose_cfg(
        [
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=1",
            "model=lenet5",
            "optimizer.lr=0.0",
            "scheduler=none",
            "data.samples_per_class=5",
            "data.val_size=100",
            "data.batch_size=25",
            "trainer.max_epochs=10",
            "test=false",
        ]
    )
    results = train(cfg)
    assert results["status"] == "completed", results.get("error")
    assert results["epochs"] == 2
