"""An exponential moving average (EMA) of the model's weights, saved with every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class EMA(L.Callback):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after every training step (as timm's
    ModelEmaV2 and torchvision's ``--model-ema`` do), over the model's whole state dict (BatchNorm
    statistics too). The average is stored in every checkpoint under
    ``checkpoint["callbacks"]["EMA"]["weights"]``, with the model's keys, and a resumed run
    continues it."""

    def __init__(self, decay: float = 0.999) -> None:
        self.decay = decay
        self.weights: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = pl_module.model.state_dict()
        if self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in state.items()}
        else:  # restored from a checkpoint, on the CPU
            self.weights = {k: v.to(state[k].device) for k, v in self.weights.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for key, value in pl_module.model.state_dict().items():
            average = self.weights[key]
            if average.is_floating_point():
                average.lerp_(value, 1 - self.decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights = state_dict["weights"]
