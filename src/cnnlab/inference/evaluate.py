"""A trained model's accuracy on a test split: top-1/top-5, per class and as a confusion matrix,
and with test-time augmentation, as the run's own test computed them (the core of
``cnnlab-eval``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from cnnlab.augment.tta import tta_mode
from cnnlab.config.schema import TTAMode, register
from cnnlab.errors import CnnlabError
from cnnlab.inference.loading import Trained
from cnnlab.paths import config_dir
from cnnlab.training.module import macro_metrics


def data_config(run_config: DictConfig, option: str | None, data_keys: list[str]) -> DictConfig:
    """The run config with its data node replaced by conf/data/<option>.yaml and/or overridden,
    resolved in the context of the run (its seed and paths)."""
    cfg = run_config.copy()
    if option is not None:
        path = Path(config_dir()) / "data" / f"{option}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
            raise CnnlabError(f"data={option}: there is no {path}. Options: {known}.")
        cfg.data = OmegaConf.load(path)
        # The model takes the run's channels and size, whatever the other data set stores.
        cfg.data.channels, cfg.data.image_size = (
            run_config.data.channels,
            run_config.data.image_size,
        )
    register()
    try:
        cfg.data = OmegaConf.merge(cfg.data, OmegaConf.from_dotlist(data_keys).get("data", {}))
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except OmegaConfBaseException as e:
        raise CnnlabError(f"Bad data config: {str(e).splitlines()[0]}.") from None


def evaluate(trained: Trained, datamodule, tta: str | TTAMode = TTAMode.none) -> dict:
    """The keys of the run's results.json that describe its test, computed by the same
    torchmetrics classes on the same batches: top-1, top-5, per-class accuracy and confusion
    matrix of the plain model and, with ``tta``, ``test_acc_tta`` of the probabilities averaged
    over the views; and every prediction (the averaged probabilities' with ``tta``)."""
    tta, n = tta_mode(tta), len(trained.class_names)
    if datamodule.num_classes != n:
        raise CnnlabError(
            f"The data set has {datamodule.num_classes} classes but the model of "
            f"{trained.checkpoint} predicts {n}; evaluate it on data with the same classes."
        )
    device = trained.device
    top1 = MulticlassAccuracy(n, average="micro").to(device)
    top5 = MulticlassAccuracy(n, top_k=min(5, n), average="micro").to(device)
    per_class = MulticlassAccuracy(n, average=None).to(device)
    confusion = MulticlassConfusionMatrix(n).to(device)
    top1_tta = MulticlassAccuracy(n, average="micro").to(device)
    macro = {name: metric.to(device) for name, metric in macro_metrics(n).items()}
    predictions = []
    for images, labels in datamodule.test_dataloader():
        logits, labels = trained.logits(images), labels.to(device)
        for metric in (top1, top5, per_class, confusion, *macro.values()):
            metric.update(logits, labels)
        scores = logits
        if tta is not TTAMode.none:
            scores = trained.probs(images, tta)
            top1_tta.update(scores, labels)
        predictions += scores.argmax(1).tolist()
    report = {
        "test_acc": float(top1.compute()),
        "test_acc_top5": float(top5.compute()),
        **{f"test_{name}": float(metric.compute()) for name, metric in macro.items()},
        "per_class_acc": dict(zip(trained.class_names, per_class.compute().tolist(), strict=True)),
        "confusion_matrix": confusion.compute().tolist(),
        "class_names": trained.class_names,
        "tta": tta.value,
        "predictions": predictions,
    }
    if tta is not TTAMode.none:
        report["test_acc_tta"] = float(top1_tta.compute())
    return report
