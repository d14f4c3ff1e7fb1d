"""An exponential moving average (EMA) of the model's weights that is what the run reports:
validated, chosen as the best checkpoint, tested, evaluated, exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

PREFIX = "model."  # the model's keys in a ClassificationModule's state dict
RAW_KEY = "raw_state_dict"  # where a checkpoint keeps the raw (not averaged) weights


class EMA(L.Callback):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after every optimizer step (as timm's
    ModelEmaV2 and torchvision's ``--model-ema`` do), over the model's whole state dict
    (BatchNorm statistics too), with ``torch._foreach_lerp_``.

    The average is the run's model: it is swapped in for every validation during training (so
    ``val_acc`` and the best checkpoint are the EMA's), it is in the model when training ends,
    and every checkpoint holds it as its ``state_dict`` (which cnnlab-eval, predict, export and
    ``transfer.init_from`` read) with the raw weights under ``raw_state_dict``, from which a
    resumed run continues training exactly. Lightning's ``EMAWeightAveraging`` swaps the same
    way, but keeps a deep copy of the whole LightningModule and, once a trainer has fitted, loads
    the raw weights into the model for ``trainer.test(ckpt_path=...)``.
    """

    def __init__(self, decay: float = 0.999) -> None:
        self.decay = decay
        # The weights that are not in the model: the average while the model trains, the raw
        # weights while the model holds the average (validation, after training).
        self.held: dict[str, torch.Tensor] | None = None
        self.model_holds = "raw"
        self.updated_step = 0

    def average(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return pl_module.model.state_dict() if self.model_holds == "ema" else self.held

    def raw(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return self.held if self.model_holds == "ema" else pl_module.model.state_dict()

    def swap(self, pl_module: L.LightningModule, to: str) -> None:
        """Put the average (``to="ema"``) or the raw weights in the model."""
        if self.held is None or self.model_holds == to:
            return
        state = pl_module.model.state_dict()
        current = [state[k] for k in self.held]
        kept = [t.clone() for t in current]
        torch._foreach_copy_(current, list(self.held.values()))
        torch._foreach_copy_(list(self.held.values()), kept)
        self.model_holds = to

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = pl_module.model.state_dict()
        if self.held is None:
            self.held = {k: v.detach().clone() for k, v in state.items()}
        else:  # restored from a checkpoint, on the CPU
            self.held = {k: v.to(state[k].device) for k, v in self.held.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.updated_step:  # accumulating gradients: no step yet
            return
        self.updated_step = trainer.global_step
        state = pl_module.model.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        torch._foreach_lerp_(
            [self.held[k] for k in floats], [state[k] for k in floats], 1 - self.decay
        )
        for key in state.keys() - set(floats):  # BatchNorm's batch counters
            self.held[key].copy_(state[key])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self.swap(pl_module, "ema")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self.swap(pl_module, "raw")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap(pl_module, "ema")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.held is None:
            return
        state = checkpoint["state_dict"]
        checkpoint[RAW_KEY] = {PREFIX + k: v for k, v in self.raw(pl_module).items()}
        state.update({PREFIX + k: v for k, v in self.average(pl_module).items()})

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Lightning has loaded the checkpoint's state_dict, the average, into the model; training
        # continues from the raw weights. (Testing from a checkpoint keeps the average.)
        raw = checkpoint.get(RAW_KEY)
        if trainer.state.fn != TrainerFn.FITTING or raw is None:
            return
        state = pl_module.model.state_dict()
        self.held = {k: v.detach().clone() for k, v in state.items()}
        pl_module.model.load_state_dict(model_part(raw))
        self.model_holds = "raw"

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updated_step": self.updated_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updated_step = state_dict.get("updated_step", 0)


def model_part(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's entries of a ClassificationModule state dict, with the model's own keys."""
    return {k[len(PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PREFIX)}


def ema_callback(trainer: L.Trainer) -> EMA | None:
    return next((c for c in trainer.callbacks if isinstance(c, EMA)), None)


def raw_weights(
    ema: EMA, pl_module: L.LightningModule, checkpoint: str | None
) -> dict[str, torch.Tensor]:
    """The raw weights that go with the tested average: those saved next to it in
    ``checkpoint``, or without one those the EMA callback holds after training."""
    if checkpoint is None:
        return {k: v.clone() for k, v in ema.raw(pl_module).items()}
    saved = torch.load(Path(checkpoint), map_location="cpu", weights_only=True, mmap=True)
    return model_part(saved[RAW_KEY])
