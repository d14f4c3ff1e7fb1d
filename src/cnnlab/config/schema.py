"""Config schemas, resolvers and validation.

Groups with a fixed shape (module, transfer, eval, convergence, paths) are dataclasses
registered in Hydra's ConfigStore as ``train_schema``, so Hydra rejects a misspelt key or a
badly typed value while it composes. Groups that name a class with ``_target_`` (model, data,
augmentation, optimizer, scheduler, logger, callbacks) take whatever that class takes, and so
does ``trainer`` (the arguments of ``lightning.Trainer``): their schema is derived from the
signature and checked by :func:`validate` before anything runs. The optimizer and scheduler
groups also carry cnnlab's own options around their class (:class:`OptimizerOptions`,
:class:`SchedulerOptions`). Deriving a schema needs the class imported, and importing Lightning
takes seconds, which ``cnnlab-train --help`` and ``--cfg job`` should not pay.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnnlab.config.job import job_name, sweep_group
from cnnlab.config.lightning_source import trainer_defaults_from_source
from cnnlab.errors import CnnlabError


class TransferStrategy(enum.Enum):
    scratch = "scratch"
    finetune = "finetune"
    feature_extract = "feature_extract"
    partial = "partial"
    two_stage = "two_stage"


class Interval(enum.Enum):
    step = "step"
    epoch = "epoch"


class WarmupMode(enum.Enum):
    linear = "linear"
    constant = "constant"


@dataclass
class OptimizerOptions:
    """What cnnlab adds around the ``optimizer`` group's ``_target_`` class; the group's other
    keys are that class's arguments (``lr`` and ``weight_decay`` become each parameter group's)."""

    # Decaying BatchNorm scales and biases only shrinks them; timm and torchvision skip them.
    decay_norm_and_bias: bool = False
    # false: no weight decay on depthwise convolutions either, whose few weights per channel
    # need little regularisation (MobileNet v1, section 4).
    decay_depthwise: bool = True


@dataclass
class SchedulerOptions:
    """What cnnlab adds around the ``scheduler`` group's ``_target_`` class (any scheduler of
    torch.optim.lr_scheduler or timm.scheduler; null: a constant learning rate); the group's
    other keys are that class's arguments."""

    # How often the class's step() runs: after every optimizer step, or every epoch.
    interval: Interval = Interval.step
    # The unit of warmup and of the arguments named in time_args (which are converted to
    # `interval` units: 2.4 epochs at 100 steps per epoch is a step_size of 240 steps).
    unit: Interval = Interval.epoch
    time_args: list[str] = field(default_factory=list)
    # The argument that takes the run's length in `interval` units (T_max, total_steps...).
    length_arg: Optional[str] = None
    # `warmup` units of warm-up on the schedule's own clock (timm's and TensorFlow's: milestones
    # still count from the first step): linear from warmup_factor x the learning rate to 1x, or
    # constant at warmup_factor x.
    warmup: float = 0.0
    warmup_factor: float = 0.0
    warmup_mode: WarmupMode = WarmupMode.linear
    # The logged metric that ReduceLROnPlateau's step() is given (e.g. val_loss, val_acc).
    monitor: Optional[str] = None


def split_options(node: DictConfig, options: type) -> tuple[DictConfig, dict[str, Any]]:
    """(cnnlab's options of the group, typed by the dataclass ``options``; the keyword arguments
    of the group's ``_target_`` class) of an ``optimizer`` or ``scheduler`` node."""
    names = {f.name for f in dataclasses.fields(options)}
    own = {k: v for k, v in node.items() if k in names}
    rest = {k: v for k, v in node.items() if k not in names and not str(k).startswith("_")}
    return OmegaConf.merge(OmegaConf.structured(options), own), rest


@dataclass
class ModuleConfig:
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    # null, auto (inverse class frequency of the training split) or one weight per class.
    class_weights: Any = None
    # null or the options of cnnlab.augment.resolution.ResolutionRamp, which checks them (an
    # Optional dataclass here would make OmegaConf refuse to merge a dict into the null).
    progressive_resize: Any = None


@dataclass
class TransferConfig:
    """The options of the strategies of cnnlab.transfer.strategies (conf/transfer/*.yaml say
    which is whose)."""

    strategy: TransferStrategy = TransferStrategy.scratch
    # A weights file (.pth, .safetensors, .ckpt), an earlier run's directory or torchvision name.
    init_from: Optional[str] = None
    cut_at: Optional[str] = None
    freeze_kept: bool = False
    cache_features: bool = False
    backbone_lr_scale: float = 1.0
    layer_decay: Optional[float] = None
    unfreeze_epoch: int = 1
    unfreeze_blocks: Optional[int] = None
    stage2_lr: float = 1e-3
    keep_bn_frozen: bool = False


class TTAMode(enum.Enum):
    none = "none"
    hflip = "hflip"
    five_crop = "five_crop"
    ten_crop = "ten_crop"
    multiscale = "multiscale"


@dataclass
class EvalConfig:
    # Test-time augmentation: test_acc_tta (averaged over views) is reported next to test_acc.
    tta: TTAMode = TTAMode.none


@dataclass
class ConvergenceConfig:
    """When a run counts as trained to convergence (cnnlab.training.convergence): its training
    loss fell by less than ``loss_drop`` (a fraction) over the last fifth of its epochs, or its
    last epoch's training accuracy reached ``acc_ceiling``; and that accuracy is at least
    ``above_chance`` above chance (1 / the number of classes). Both are measured on
    ``probe_images`` fixed training images in inference mode (0: the epoch's running figures in
    training mode instead) at the end of the epochs the rule reads, or of every epoch with
    ``probe_every_epoch`` (curves of the whole run, at the probe's cost each epoch)."""

    loss_drop: float = 0.02
    acc_ceiling: float = 0.995
    above_chance: float = 0.1
    probe_images: int = 512
    probe_every_epoch: bool = False


@dataclass
class AblationConfig:
    """A source text's claim that an experiment under conf/experiment/ablation/ tests, and how
    ``scripts/reproduce.py`` judges it (see cnnlab.analysis.ablation); cnnlab-train does not
    read it."""

    number: int = MISSING
    title: str = MISSING
    claim: str = MISSING
    source: str = MISSING
    # What the paper measured, where it did.
    paper: str = ""
    # The parameters the table groups runs by, and the metrics it shows (results.json keys,
    # overfit_gap, or <curve>@<epoch> such as val_acc@3).
    by: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["test_acc"])
    # Each names what it predicts (says) about a metric, for groups selected by {param: value}:
    # higher/lower (beyond the seed spread), similar: [a, b] or not_below/than (within the spread
    # or `within`), or of/to with between: [low, high] for the ratio of the two groups' means.
    expect: list[Any] = field(default_factory=list)
    # Overrides per scale; the experiment itself is the cpu scale.
    scales: dict[str, list[str]] = field(default_factory=dict)
    # A source run trained first ({overrides: [...], scales: {ci: [...]}}), whose run dir the
    # sweep's jobs get as transfer.init_from.
    pretrain: Optional[dict[str, Any]] = None
    # Evaluate the sweep's runs as an ensemble with this test-time augmentation.
    ensemble_tta: Optional[str] = None
    # What a reader needs to know to read the result, printed under the verdict.
    note: str = ""


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    output_root: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


def _schema_type(annotation: Any) -> Any:
    """The OmegaConf field type for a Python annotation; Any where OmegaConf cannot express it."""
    if annotation in (int, float, bool, str):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _schema_type(rest[0])
            return Any if inner is Any else Optional[inner]
        return Any
    if origin in (list, tuple, Sequence) and args and args[0] in (int, float, str, bool):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return Any
        return List[args[0]]
    return Any


def _default(param: inspect.Parameter) -> Any:
    if param.default is inspect.Parameter.empty:
        return MISSING
    if isinstance(param.default, (int, float, bool, str, type(None), enum.Enum)):
        return param.default
    return None


@functools.cache
def signature_schema(target: Callable) -> type | None:
    """A dataclass of the keyword arguments of ``target``; None if it takes **kwargs."""
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to untyped fields
        hints = {}
    params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    fields = []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        kind = _schema_type(hints.get(p.name, Any))
        default = _default(p)
        if kind is not Any and default is None and not _allows_none(kind):
            kind = Optional[kind]
        fields.append((p.name, kind, field(default=default)))
    return dataclasses.make_dataclass(f"{target.__name__}Schema", fields)


def _allows_none(kind: Any) -> bool:
    return type(None) in typing.get_args(kind)


@functools.cache
def trainer_schema() -> type:
    from lightning import Trainer

    schema = signature_schema(Trainer)
    # logger and callbacks are cnnlab groups of their own; cnnlab adds "auto" precision.
    keep = [
        (f.name, f.type, field(default=f.default))
        for f in dataclasses.fields(schema)
        if f.name not in ("logger", "callbacks")
    ]
    return dataclasses.make_dataclass("TrainerConfig", keep)


def _composable_trainer_schema() -> type:
    """Every Trainer argument with its default and any type: enough for Hydra to accept
    ``trainer.limit_train_batches=10`` while composing. :func:`validate` checks the types."""
    defaults = trainer_defaults_from_source()
    if defaults is None:
        return trainer_schema()
    keep = [
        (name, Any, field(default=default))
        for name, default in defaults.items()
        if name not in ("logger", "callbacks")
    ]
    return dataclasses.make_dataclass("TrainerArguments", keep)


# Each default here is conf/train.yaml's (tests/test_defaults.py holds them equal): the YAML is
# what users get, and a config composed without one of its groups must not train otherwise.
DEFAULT_NAME = "${hydra:runtime.choices.model}-${hydra:runtime.choices.data}"


@functools.cache
def train_schema() -> type:
    trainer = _composable_trainer_schema()
    return dataclasses.make_dataclass(
        "TrainConfig",
        [
            ("seed", int, field(default=42)),
            ("name", str, field(default=DEFAULT_NAME)),
            ("resume", Optional[str], field(default=None)),
            ("resume_fallback", bool, field(default=True)),
            ("ckpt_path", Optional[str], field(default=None)),
            ("skip_completed", bool, field(default=True)),
            ("test", bool, field(default=True)),
            ("model", Any, field(default=MISSING)),
            ("data", Any, field(default=MISSING)),
            ("augmentation", Any, field(default=None)),
            ("logger", dict[str, Any], field(default_factory=dict)),
            ("callbacks", dict[str, Any], field(default_factory=dict)),
            ("transfer", TransferConfig, field(default_factory=TransferConfig)),
            ("optimizer", dict[str, Any], field(default_factory=dict)),
            ("scheduler", dict[str, Any], field(default_factory=dict)),
            ("module", ModuleConfig, field(default_factory=ModuleConfig)),
            ("eval", EvalConfig, field(default_factory=EvalConfig)),
            ("convergence", ConvergenceConfig, field(default_factory=ConvergenceConfig)),
            ("paths", PathsConfig, field(default_factory=PathsConfig)),
            ("trainer", trainer, field(default_factory=trainer)),
            ("ablation", Optional[AblationConfig], field(default=None)),
        ],
    )


_unique_dirs: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """``path``, or ``path_1``, ``path_2``... if a run already lives there: never reuse a run dir.

    Memoised, because Hydra resolves its run dir more than once in a process.
    """
    if path not in _unique_dirs:
        candidate, n = Path(path), 0
        while candidate.exists():
            n += 1
            candidate = Path(f"{path}_{n}")
        _unique_dirs[path] = str(candidate)
    return _unique_dirs[path]


def sweep_name(*, _root_: DictConfig) -> str:
    """The run name for a sweep's directory; ``sweep`` when the name is an interpolation, such
    as the default one built from the model and data that each job of the sweep chooses."""
    return "sweep" if OmegaConf.is_interpolation(_root_, "name") else str(_root_.name)


def count_class_dirs(root: str) -> int:
    """The number of class folders in an image-folder tree (its ``train/`` part if it has one)."""
    base = Path(root).expanduser()
    if (base / "train").is_dir():
        base = base / "train"
    if not base.is_dir():
        raise CnnlabError(
            f"data.root={root!r} is not a folder. data=image_folder expects a tree "
            "root/<class>/<image> (or root/train/<class>/<image> with optional val/ and test/)."
        )
    return sum(1 for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_count(classes: Sequence[int] | None, all_classes: int) -> int:
    """The number of classes a model predicts: those of ``data.classes`` if it keeps some."""
    return all_classes if classes is None else len(classes)


def register() -> None:
    """Register resolvers and the schema; safe to call more than once."""
    for name, fn in (
        ("cnnlab.unique_dir", unique_dir),
        ("cnnlab.class_dirs", count_class_dirs),
        ("cnnlab.class_count", class_count),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
    # Not cached: each job of a sweep resolves its own.
    for name, fn in (
        ("cnnlab.sweep_name", sweep_name),
        ("cnnlab.sweep_group", sweep_group),
        ("cnnlab.job_name", job_name),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    ConfigStore.instance().store(name="train_schema", node=train_schema())


def _import_target(path: str, where: str) -> Callable:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise CnnlabError(
            f"{where}._target_={path!r} cannot be imported ({e}). Give the dotted path of a "
            "class or function, e.g. cnnlab.models.resnet.ResNet."
        ) from None


def _check_target(node: DictConfig, where: str, also: Sequence[str] = ()) -> None:
    """Refuse an argument that ``node._target_`` does not take, or of the wrong type. ``also``:
    cnnlab's own keys of the group, named in the message as accepted too."""
    target = _import_target(node._target_, where)
    schema = signature_schema(target)
    if schema is None:
        return
    values = {k: v for k, v in node.items() if not str(k).startswith("_")}
    accepted = ", ".join([f.name for f in dataclasses.fields(schema)] + list(also))
    try:
        OmegaConf.merge(OmegaConf.structured(schema), values)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        detail = str(e).splitlines()[0]
        raise CnnlabError(
            f"Bad config value {where}.{key}: {detail}. {node._target_} accepts: {accepted}."
        ) from None


def _check_optim_group(node: DictConfig, where: str, options: type) -> None:
    """An ``optimizer`` or ``scheduler`` group: cnnlab's options typed, the rest checked against
    the ``_target_`` class's signature. Arguments in ``time_args`` are converted before the class
    sees them (2.4 epochs become 240 steps), so they need only be numbers here."""
    names = [f.name for f in dataclasses.fields(options)]
    try:
        own, args = split_options(node, options)
    except OmegaConfBaseException as e:
        raise CnnlabError(
            f"Bad config value {where}.{e.full_key}: {str(e).splitlines()[0]}. cnnlab's own "
            f"options of {where}: {', '.join(names)}."
        ) from None
    if node.get("_target_") is None:
        if where == "optimizer" or args:
            raise CnnlabError(
                f"{where} has no _target_ class to give {', '.join(args) or 'the parameters'} "
                f"to. Name one, e.g. {where}._target_=torch.optim.SGD (conf/{where}/*.yaml)."
            )
        return
    timed = list(own.get("time_args", []))
    for key in timed:
        values = args.pop(key, None)
        values = values if isinstance(values, ListConfig) else [values]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise CnnlabError(
                f"{where}.{key}={node.get(key)} is in {where}.time_args, so it must be a number "
                f"(or a list of numbers) of {where}.unit={own.unit.value}s."
            )
    if own.get("length_arg"):
        timed.append(own.length_arg)
    _check_target(OmegaConf.create({"_target_": node._target_, **args}), where, names)
    schema = signature_schema(_import_target(node._target_, where))
    accepted = {f.name for f in dataclasses.fields(schema)} if schema else set(timed)
    for key in timed:
        if key not in accepted:
            raise CnnlabError(
                f"{where}.time_args or length_arg names {key!r}, which {node._target_} does not "
                f"take. It accepts: {', '.join(sorted(accepted))}."
            )


def _walk_targets(node: Any, where: str) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_target(node, where)
        for k, v in node.items():
            _walk_targets(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            _walk_targets(v, f"{where}[{i}]")


def validate(cfg: DictConfig) -> DictConfig:
    """Resolve every interpolation and check each ``_target_`` node against its signature."""
    try:
        container = OmegaConf.to_container(
            cfg, resolve=True, throw_on_missing=True, enum_to_str=True
        )
    except OmegaConfBaseException as e:
        raise CnnlabError(f"Incomplete config: {str(e).splitlines()[0]} ({e.full_key}).") from None
    resolved = OmegaConf.create(container)
    try:
        # Hydra's "+key=value" may add keys to a schema node; merging into the schema catches them.
        typed = OmegaConf.merge(OmegaConf.structured(train_schema()), resolved)
    except OmegaConfBaseException as e:
        raise CnnlabError(f"Bad config value {e.full_key}: {str(e).splitlines()[0]}.") from None
    try:
        OmegaConf.merge(OmegaConf.structured(trainer_schema()), resolved.trainer)
    except OmegaConfBaseException as e:
        accepted = ", ".join(f.name for f in dataclasses.fields(trainer_schema()))
        raise CnnlabError(
            f"Bad config value trainer.{e.full_key}: {str(e).splitlines()[0]}. "
            f"lightning.Trainer accepts: {accepted}."
        ) from None
    # The schema's defaults for what a config stored by a cnnlab older than the rule, or than one
    # of its terms, lacks.
    resolved.convergence = OmegaConf.to_container(typed.convergence)
    for key, high in (("loss_drop", 1.0), ("acc_ceiling", 1.0), ("above_chance", 1.0)):
        value = resolved.convergence[key]
        if not 0.0 < value <= high:
            raise CnnlabError(
                f"convergence.{key}={value} is not a fraction in (0, 1]. loss_drop is the relative "
                "fall of the training loss over the last fifth of the epochs below which it has "
                "flattened (e.g. 0.02); acc_ceiling the training accuracy at which a run has "
                "nothing left to fit (e.g. 0.995); above_chance how far above chance the last "
                "training accuracy must be for a run to have trained at all (e.g. 0.1)."
            )
    probe = resolved.convergence["probe_images"]
    if probe < 0:
        raise CnnlabError(
            f"convergence.probe_images={probe} is negative. It is how many fixed training images "
            "are evaluated in inference mode after each epoch for the convergence rule (e.g. "
            "512), or 0 to judge on the epoch's running training loss and accuracy instead."
        )
    if resolved.ckpt_path and not Path(resolved.ckpt_path).is_file():
        raise CnnlabError(
            f"ckpt_path={resolved.ckpt_path!r} is not a file. Give the path of a checkpoint, e.g. "
            "outputs/<date>/<time>_<name>/checkpoints/last.ckpt."
        )
    for group in ("model", "data", "augmentation", "logger", "callbacks"):
        _walk_targets(resolved.get(group), group)
    _check_optim_group(resolved.optimizer, "optimizer", OptimizerOptions)
    _check_optim_group(resolved.scheduler, "scheduler", SchedulerOptions)
    return resolved
