"""Whether a run trained to convergence: the rule that results.json's ``converged`` records and
that the ablation runner (cnnlab.analysis.ablation) judges claims on.

A run has converged when its training loss has flattened, or when it has nothing left to fit:

- over the last fifth of its epochs (``k = n // 5``) the training loss fell by less than
  ``loss_drop`` (a fraction) of its level at their start. The fall is read off a Theil-Sen line
  through the epoch before the window and the window's ``k`` epochs (the median of the slopes
  between every two of them, the level at the start the median of the losses less the slope's
  part): one noisy epoch moves neither, so a noisy last epoch cannot make a loss that is still
  falling look flat, and noise alone makes no fall. The window's minimum against the epoch
  before it did: the least of ``k`` noisy losses lies below their level, so a flat loss of
  one-batch epochs (claim 9's 20 images per class) or of small losses (plain-20 at 0.08-0.09)
  read as a fall of 8%. A loss that rose counts as flat (it had stopped falling);
- or its training accuracy in the last epoch reached ``acc_ceiling``;

and it trained at all: its last training accuracy is at least ``above_chance`` above chance
(1 / the number of classes). A network stuck at chance has a loss as flat as a trained one's (a
naive GoogLeNet that never left 10% training accuracy on ten classes did), and is not converged.

A run of fewer than five epochs has no last fifth: only the ceiling can show it converged. A
run whose losses are not all finite never converged.

The fall's noise is reported beside it (``fall_noise``, one standard error, from the residuals'
median absolute deviation about the line): it says what the rule could resolve. Loss and
accuracy are those of ``convergence.probe_images`` fixed training images evaluated in inference
mode after each epoch the rule reads (:meth:`ClassificationModule.evaluate_probe`; every epoch
when the run's length is not known in advance, or with ``probe_every_epoch``): the fit of the
training set itself. An epoch's running loss, the mean over its batches in training mode, moves
by several percent from epoch to epoch on a few hundred images (which images a batch holds
changes their BatchNorm statistics; augmentation and dropout change what is fitted), about the
rule's 2%; and its running accuracy under dropout or augmentation stays below a ceiling that the
network has reached on the images themselves. With ``probe_images=0`` (or a run resumed from a
checkpoint older than the probe) the rule reads the running figures; where their noise is
larger than ``loss_drop``, only the ceiling can show such a run converged, and the reason says
so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

# The window is the last 1/WINDOW of the epochs.
WINDOW = 5
# The fewest epochs (the window and the one before it) whose residuals can show the noise.
MIN_NOISE_POINTS = 5


def epochs_read(epochs: int) -> int:
    """How many of a run's last epochs the rule reads for a run of ``epochs`` epochs: the
    window and the epoch before it (the last epoch alone when there is no window)."""
    return epochs // WINDOW + 1


def planned_epochs(
    max_epochs: int | None, max_steps: int | None, steps_per_epoch: float
) -> int | None:
    """How many epochs a fit of at most ``max_epochs`` epochs and ``max_steps`` optimizer steps
    (None or -1: no limit) runs at ``steps_per_epoch`` (inf: not known, as for a stream): the
    step limit ends it in the epoch of its last step (claim 9's budget of 400 steps, in epochs
    of one batch: 400). None where that is not known in advance."""
    epochs = None if max_epochs in (None, -1) else max_epochs
    if max_steps in (None, -1):
        return epochs
    if not math.isfinite(steps_per_epoch) or steps_per_epoch < 1:
        return None
    by_steps = math.ceil(max_steps / steps_per_epoch)
    return by_steps if epochs is None else min(epochs, by_steps)


def judge(
    losses: Sequence[float], last_train_acc: float | None, num_classes: int, loss_drop: float,
    acc_ceiling: float, above_chance: float, measured_on: str = "training",
) -> dict[str, Any]:  # fmt: skip
    """``{"converged": bool, "convergence": {the figures it was judged on}}`` for a run of
    ``num_classes`` classes whose epochs ended with the training losses ``losses`` and last
    training accuracy ``last_train_acc``; ``measured_on`` says how they were measured
    (``training``: the epochs' running figures; or the probe's images in inference mode)."""
    epochs = len(losses)
    window = epochs // WINDOW
    finite = all(math.isfinite(x) for x in losses)
    drop = noise = None
    if window >= 1 and finite:
        drop, noise = fall_and_noise(losses[-window - 1 :])
    flat = drop is not None and drop < loss_drop
    full = last_train_acc is not None and last_train_acc >= acc_ceiling
    floor = 1.0 / num_classes + above_chance
    trained = last_train_acc is not None and last_train_acc >= floor
    converged = finite and trained and (flat or full)
    reason = _reason(
        drop, noise, last_train_acc, loss_drop, acc_ceiling, floor, epochs, window, finite,
        measured_on,
    )  # fmt: skip
    return {
        "converged": converged,
        "convergence": {
            "relative_loss_drop": drop,
            "fall_noise": noise,
            "last_train_acc": last_train_acc,
            "loss_drop": loss_drop,
            "acc_ceiling": acc_ceiling,
            "chance_floor": floor,
            "epochs": epochs,
            "window_epochs": window,
            "measured_on": measured_on,
            "reason": reason,
        },
    }


def fall_and_noise(losses: Sequence[float]) -> tuple[float, float | None]:
    """How much ``losses`` fell from the first epoch to the last, as a fraction of their level at
    the first, read off their Theil-Sen line (negative when they rose); and that fall's standard
    error: the residuals' scale about the line (1.4826 times their median absolute deviation,
    the standard deviation were they normal) carried through the least-squares formula for a
    slope's error, as a fraction of the same level; None for fewer than five epochs, whose
    residuals about a line fitted through them are mostly nil (three read a noise of 0%)."""
    slopes = [
        (losses[j] - losses[i]) / (j - i)
        for i in range(len(losses))
        for j in range(i + 1, len(losses))
    ]
    slope = statistics.median(slopes)
    start = statistics.median(y - slope * x for x, y in enumerate(losses))
    n = len(losses)
    if start <= 0:
        return 0.0, None
    drop = -slope * (n - 1) / start
    if n < MIN_NOISE_POINTS:
        return drop, None
    residuals = [y - start - slope * x for x, y in enumerate(losses)]
    sigma = 1.4826 * statistics.median(abs(r) for r in residuals)
    spread = sum((x - (n - 1) / 2) ** 2 for x in range(n))
    return drop, sigma / math.sqrt(spread) * (n - 1) / start


def _reason(
    drop: float | None, noise: float | None, acc: float | None, loss_drop: float, ceiling: float,
    floor: float, epochs: int, window: int, finite: bool, measured_on: str,
) -> str:  # fmt: skip
    if not finite:
        return "a training loss was not finite"
    if acc is None:
        return "no training accuracy was logged: whether it trained is unknown"
    # "training accuracy 97.00%" or "training accuracy (inference-mode, 512 training images)".
    name = "training accuracy" + ("" if measured_on == "training" else f" ({measured_on})")
    if acc < floor:
        return f"{name} {acc:.2%} below {floor:.2%}, chance and a margin: not trained"
    if acc >= ceiling:
        return f"{name} {acc:.2%} reached the ceiling {ceiling:.2%}"
    below = f", {name} {acc:.2%} below the ceiling {ceiling:.2%}"
    if drop is None:
        return f"{epochs} epoch(s): too short for a last fifth{below}"
    spread = "noise unknown" if noise is None else f"noise {noise:.2%}"
    over = f"the loss fell {drop:.2%} ({spread}) over the last {window} of {epochs} epochs"
    if drop < loss_drop:
        return f"{over}, less than {loss_drop:.2%}"
    noisy = ""
    if noise is not None and noise > loss_drop:
        noisy = f"; its noise is larger than the {loss_drop:.2%} the rule must resolve"
    return f"{over}, not less than {loss_drop:.2%}: still falling{below}{noisy}"
