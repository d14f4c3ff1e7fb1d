"""The training step as a GPU needs it, checked on the CPU: no host synchronisation in the step
(metrics stay on the device), and torch.compile's modes, CUDA-graph capture included, selectable
from the config. GPU timings are in BENCHMARKS.md when a device was lent."""

from __future__ import annotations

import collections

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode

from cnnlab.config.schema import validate
from cnnlab.errors import CnnlabError
from cnnlab.training.module import COMPILE_MODES
from cnnlab.training.run import build_module, slow_bf16_warning
from conftest import needs_fmnist

pytestmark = needs_fmnist

TINY = ["data.samples_per_class=20", "data.batch_size=25", "data.val_size=100"]

# Operators that make the host wait for the device: reading a value (.item(), bool(), int() of
# a tensor all dispatch to _local_scalar_dense), and those whose output size depends on the
# data (the host must learn it before it can allocate the output).
SYNCING = {
    "_local_scalar_dense",
    "nonzero",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "bincount",
    "repeat_interleave",
}


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


class StepOps(L.Callback):
    """The operators of each training step: forward, loss, metric updates and self.log, up to
    the backward pass."""

    def __init__(self) -> None:
        self.steps: list[collections.Counter[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.mode = CountOps()
        self.mode.__enter__()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.mode.__exit__(None, None, None)
        self.steps.append(self.mode.ops)


def fit(cfg, steps: int, callbacks=()) -> tuple[L.Trainer, L.LightningModule]:
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=1,
        # Every step is a logging step, so that the step's self.log runs too.
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=list(callbacks),
    )
    module = build_module(cfg, datamodule)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


def test_training_step_reads_nothing_back_from_the_device(compose_cfg):
    spy = StepOps()
    fit(validate(compose_cfg(TINY)), steps=5, callbacks=[spy])
    assert len(spy.steps) == 5
    for ops in spy.steps:
        assert ops["convolution"] > 0  # the spy saw the step
        assert not SYNCING & set(ops), {op: ops[op] for op in SYNCING & set(ops)}


@pytest.mark.parametrize("mode", COMPILE_MODES)
def test_each_compile_mode_composes_and_compiles_the_model(compose_cfg, mode):
    cfg = validate(compose_cfg([*TINY, "module.compile=true", f"module.compile_mode={mode}"]))
    assert cfg.module.compile_mode == mode
    datamodule = instantiate(cfg.data)
    assert build_module(cfg, datamodule).model._compiled_call_impl is not None
    # The mode is read only when compile is on.
    cfg.module.compile = False
    assert build_module(cfg, datamodule).model._compiled_call_impl is None


def test_an_unknown_compile_mode_is_named_with_the_accepted_ones(compose_cfg):
    cfg = validate(compose_cfg([*TINY, "module.compile=true", "module.compile_mode=reduce"]))
    with pytest.raises(CnnlabError, match=r"compile_mode='reduce'.*reduce-overhead"):
        build_module(cfg, instantiate(cfg.data))


@pytest.mark.heavy
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_model_trains_on_the_cpu(compose_cfg, mode):
    """Inductor's CPU code for the default model; reduce-overhead captures CUDA graphs only for
    CUDA tensors and otherwise runs like default."""
    cfg = validate(compose_cfg([*TINY, "module.compile=true", f"module.compile_mode={mode}"]))
    trainer, module = fit(cfg, steps=8)
    assert trainer.global_step == 8
    assert torch.isfinite(trainer.callback_metrics["val_loss"])
    # The compiled model computes what the same weights compute eagerly.
    cfg.module.compile = False
    eager = build_module(cfg, trainer.datamodule)
    eager.load_state_dict(module.state_dict())
    x, _ = eager.on_after_batch_transfer(next(iter(trainer.datamodule.val_dataloader())), 0)
    module.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), eager(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("precision", "on_cpu", "native", "warns"),
    [
        ("bf16-mixed", True, False, True),
        ("bf16-true", True, False, True),
        ("bf16-mixed", True, True, False),
        ("bf16-mixed", False, False, False),
        ("32-true", True, False, False),
    ],
)
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_of(precision, on_cpu, native, warns):
    """best_fmnist trains in bf16, 1.5x faster than fp32 on a CPU with AVX-512 BF16 and several
    times slower on one without: the warning names the value and the fix there, and only there."""
    warning = slow_bf16_warning(precision, on_cpu, native)
    assert (warning is not None) == warns
    if warns:
        assert f"trainer.precision={precision}" in warning and "trainer.precision=32" in warning
