"""One training run: compose the pieces a config names, fit, test and write the results."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from cnnlab.augment.pipeline import changes_images
from cnnlab.config.job import job_info
from cnnlab.config.schema import validate
from cnnlab.data.spec import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.runs import planning as runs
from cnnlab.runs.record import Status
from cnnlab.runs.sweep import share_machine
from cnnlab.tracking.loggers import finish_wandb
from cnnlab.tracking.profile import human
from cnnlab.tracking.reporting import model_cost, print_summary
from cnnlab.training.console import lightning_logs_once
from cnnlab.training.convergence import epochs_read
from cnnlab.training.convergence import judge as judge_convergence
from cnnlab.training.ema import ema_callback, raw_weights
from cnnlab.training.faults import AtomicCheckpointIO
from cnnlab.training.module import ClassificationModule
from cnnlab.transfer.strategies import prepare as prepare_transfer

log = logging.getLogger(__name__)


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """``auto``: bf16 mixed precision on a GPU that supports it, full fp32 elsewhere (CPUs without
    native bf16, such as AVX2-only ones, run bf16 slower than fp32)."""
    if precision != "auto":
        return precision
    gpu = trains_on_gpu(accelerator)
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def trains_on_gpu(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), where bf16 autocast
    runs wide convolutions faster than fp32 rather than several times slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def slow_bf16_warning(precision: Any, on_cpu: bool, native_bf16: bool) -> str | None:
    """The warning for bf16 training on a CPU without bf16 instructions, or None."""
    if not (on_cpu and str(precision).startswith("bf16") and not native_bf16):
        return None
    return (
        f"trainer.precision={precision} on a CPU without bf16 instructions (AVX-512 BF16 or "
        "AMX): bf16 runs several times slower than fp32 here (BENCHMARKS.md, speed options); "
        "set trainer.precision=32 (and set trainer.max_epochs from the epoch time you get) "
        "unless you want bf16's numerics."
    )


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer)
    kwargs["precision"] = resolve_precision(kwargs.get("precision"), str(kwargs["accelerator"]))
    accelerator = str(kwargs["accelerator"])
    on_cpu = accelerator in ("cpu", "auto") and not trains_on_gpu(accelerator)
    warning = slow_bf16_warning(kwargs["precision"], on_cpu, cpu_has_native_bf16())
    if warning:
        log.warning(warning)
    loggers = [instantiate(c) for c in cfg.logger.values()] if cfg.logger else False
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] if cfg.callbacks else []
    kwargs.setdefault("default_root_dir", str(run_dir))
    kwargs["plugins"] = [*(kwargs.get("plugins") or []), AtomicCheckpointIO()]
    try:
        return L.Trainer(**kwargs, logger=loggers, callbacks=callbacks)
    except (ValueError, ImportError, MisconfigurationException) as e:
        chosen = ", ".join(
            f"trainer.{k}={kwargs.get(k)}"
            for k in ("accelerator", "devices", "strategy", "precision")
        )
        raise CnnlabError(f"Lightning rejected the trainer config ({chosen}): {e}") from None


def single_device(trainer: L.Trainer, cfg: DictConfig, bare: bool = False) -> L.Trainer:
    """``trainer``, or for a multi-process one a trainer on one device in this process, without
    loggers: under DDP a DistributedSampler pads the test set with repeated images, the results
    (per-class accuracy) of spawned workers would not come back, and the CSV logger of a new
    worker would start metrics.csv afresh. ``bare``: such a trainer in any case, for a test whose
    figures go to results.json alone."""
    if trainer.world_size == 1 and not bare:
        return trainer
    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=trainer.precision,
        limit_test_batches=cfg.trainer.limit_test_batches,
        fast_dev_run=cfg.trainer.fast_dev_run,
        logger=False,
        enable_progress_bar=False,
    )


def build_module(
    cfg: DictConfig, data: DataSpec, load_weights: bool = True
) -> ClassificationModule:
    """The LightningModule of ``cfg`` for data described by ``data``; ``load_weights=False``
    leaves the transfer strategy's weights out (a checkpoint will fill the model)."""
    model = instantiate(cfg.model)
    augmentation = instantiate(cfg.augmentation) if cfg.augmentation else None
    plan = prepare_transfer(
        model,
        cfg.transfer,
        data,
        cfg.optimizer,
        augmented=changes_images(augmentation),
        load=load_weights,
    )
    convergence = cfg.get("convergence", {})
    return ClassificationModule(
        model=model,
        data=data,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        augmentation=augmentation,
        tta=cfg.eval.tta,
        callbacks=plan.callbacks,
        lr_scales=plan.lr_scales,
        feature_cache=plan.feature_cache,
        run_config=OmegaConf.to_container(cfg),
        input_stats=None if plan.load_report is None else plan.load_report.stats,
        # Configs stored by a cnnlab older than the probe have no such keys.
        probe_images=convergence.get("probe_images", 0),
        probe_every_epoch=convergence.get("probe_every_epoch", False),
        **cfg.module,
    )


def _best(trainer: L.Trainer) -> tuple[float | None, str | None]:
    """(best validation accuracy, path of its checkpoint) from the checkpoint callback; without
    one (fast_dev_run, callbacks off), the last val_acc and no checkpoint."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score), ckpt.best_model_path or None
    if ckpt is not None and ckpt.best_model_path:
        # Spawned DDP workers pass back the best checkpoint's path alone; its score is inside.
        saved = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True, mmap=True)
        return float(saved["callbacks"][ckpt.state_key]["best_model_score"]), ckpt.best_model_path
    value = trainer.callback_metrics.get("val_acc")
    return (None if value is None else float(value)), None


def _user_error(e: Exception) -> str | None:
    """The message of an error in the user's input (also when hydra.utils.instantiate wrapped
    it); None for anything else, which is a bug and keeps its traceback."""
    if isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    if isinstance(e, (CnnlabError, MisconfigurationException)):
        return str(e)
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test as ``cfg`` says; return the results also written to results.json.

    results.json exists from the start with ``status: running`` and ends as ``completed``,
    ``failed`` (with the error) or ``interrupted``, whatever happens in between.
    """
    start = time.perf_counter()
    lightning_logs_once()
    job = runs.start(cfg)
    if job.action == runs.SKIP:
        return runs.skip(job)
    if job.action == runs.BUSY:
        return runs.busy(job)
    cfg, run_dir, results = job.config, job.run_dir, job.results
    results.update(job_info())
    trainer = None

    def write_results() -> bool:
        """results.json with the wall time so far, if this process keeps the run's books."""
        results["wall_time_s"] = job.earlier.wall_time_s + time.perf_counter() - start
        keeps_books = not job.follower and (trainer is None or trainer.global_rank == 0)
        if keeps_books:
            results.write(run_dir)
        return keeps_books

    try:
        cfg = validate(cfg)
        results.update(share_machine(cfg))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        module = build_module(cfg, DataSpec.of(datamodule))
        results.update(model_cost(module))
        size, channels = module.preprocess.image_size, module.preprocess.channels
        log.info("model: %s MACs per %dx%dx%d image", human(results["macs"]), channels, size, size)
        trainer = build_trainer(cfg, run_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=job.checkpoint)
        results["epochs"] = runs.epochs_done(trainer, run_dir)
        results["best_val_acc"], best = _best(trainer)
        # The last epoch's training figures: with the test ones they show over-fitting.
        for key, name in (
            ("train_loss_epoch", "final_train_loss"),
            ("train_acc", "final_train_acc"),
        ):
            if key in trainer.callback_metrics:
                results[name] = float(trainer.callback_metrics[key])
        figures = runs.epoch_figures(trainer, module.epoch_figures(), run_dir)
        losses, probe = figures["epoch_losses"], figures["train_eval"]
        last_acc, measured_on = results.get("final_train_acc"), "training"
        read = epochs_read(len(losses))
        # A run resumed from a checkpoint older than the probe has it for some epochs only.
        probed = probe[-read:] if len(probe) == len(losses) else []
        if probed and None not in probed:
            loss, last_acc, images = probed[-1]
            results["final_train_eval_loss"], results["final_train_eval_acc"] = loss, last_acc
            # The earlier epochs keep their running loss: the rule reads them only for being
            # finite.
            losses = losses[:-read] + [entry[0] for entry in probed]
            measured_on = f"inference-mode, {images} training images"
        rule = {k: v for k, v in cfg.convergence.items() if not k.startswith("probe_")}
        results.update(
            judge_convergence(losses, last_acc, module.num_classes, measured_on=measured_on, **rule)
        )
        # On disk before testing: a run killed while it tests is continued with them, in a
        # session that trains nothing and so logs no training figures of its own.
        write_results()
        if cfg.test:
            results["tested_checkpoint"] = best
            tester = single_device(trainer, cfg)
            metrics = tester.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
            results.update({k: float(v) for k, v in metrics.items()})
            results.update(module.test_report)
            ema = ema_callback(trainer)
            results["tested_weights"] = "raw" if ema is None else "ema"
            if ema is not None:  # the raw weights' figures too: what the average adds
                module.model.load_state_dict(raw_weights(ema, module, best))
                raw = single_device(trainer, cfg, bare=True)
                metrics = raw.test(module, datamodule=datamodule, verbose=False)[0]
                results.update({f"{k}_raw": float(v) for k, v in metrics.items()})
        if datamodule.skipped_files:
            results["skipped_files"] = datamodule.skipped_files
            log.warning("%d unreadable image(s) skipped (results.json: skipped_files)",
                        len(datamodule.skipped_files))  # fmt: skip
        results.status = Status.COMPLETED
    except (KeyboardInterrupt, SystemExit):
        # Lightning turns Ctrl+C into a graceful shutdown that ends in SystemExit; so does
        # cnnlab's SIGTERM handling, after it has saved last.ckpt.
        results.status = Status.INTERRUPTED
        raise
    except Exception as e:
        user_error = _user_error(e)
        results.update(status=Status.FAILED.value, error=user_error or f"{type(e).__name__}: {e}")
        if user_error:
            raise CnnlabError(user_error) from None
        raise
    finally:
        if write_results():
            runs.finish(job, results)
        job.release()
        if trainer is not None and trainer.global_rank == 0:
            # A run that never got to train ends with its error message alone.
            print_summary(results)
        finish_wandb(0 if results.status == Status.COMPLETED else 1)
    return results
