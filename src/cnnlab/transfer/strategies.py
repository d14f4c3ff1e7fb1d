"""Transfer strategies: how a network starts from pretrained weights and which parts it trains.

``conf/transfer/*.yaml`` choose one (``transfer.strategy``):

- ``scratch``: random initialisation;
- ``finetune``: train everything from the weights, optionally with a lower learning rate for the
  backbone (``backbone_lr_scale``) and layer-wise decay towards the input (``layer_decay``);
- ``feature_extract``: freeze the backbone, train the classifier (the "head"); with
  ``cache_features`` the frozen backbone's features are computed once
  (cnnlab.transfer.feature_cache);
- ``partial``: keep the network up to ``cut_at`` (a layer name, or K for the first K blocks),
  drop the rest and classify the cut point's output with a new linear head; ``freeze_kept``;
- ``two_stage``: the EfficientNet recipe: the head alone first, then from ``unfreeze_epoch`` on
  also the top ``unfreeze_blocks`` whole blocks (all when null) at ``stage2_lr``.

The "head" is the top-level module holding the classifier layer (``fc`` of a ResNet,
``classifier`` of VGG and MobileNet). The "blocks" are the backbone's units that are trained or
frozen whole: the top-level modules with parameters, a Sequential of blocks (a ResNet stage, the
``features`` of MobileNet) split into its blocks, and a Sequential of single layers (VGG's
``features``) split after each pooling layer. ``keep_bn_frozen`` keeps BatchNorm frozen where
blocks train (cnnlab.transfer.freeze).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.config.schema import TransferConfig, TransferStrategy
from cnnlab.data.spec import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.models.weights import LoadReport, classifier_layers, load_weights, resolve
from cnnlab.optim.factory import (
    add_param_groups,
    decay_exempt,
    group_settings,
    parameter_groups,
)
from cnnlab.transfer.feature_cache import FeatureCache, FeatureCacheCallback, head_input
from cnnlab.transfer.freeze import freeze, parameter_table, unfreeze

# Frozen BatchNorm layers are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Block:
    name: str
    modules: list[nn.Module] = field(default_factory=list)


def head_name(model: nn.Module) -> str:
    """The top-level module that holds the classifier layer."""
    layers = classifier_layers(model)
    if not layers or not layers[-1][0]:
        raise CnnlabError(f"{type(model).__name__} has no classifier layer to replace.")
    return layers[-1][0].split(".")[0]


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def blocks(model: nn.Module) -> list[Block]:
    """The backbone's blocks from the input to the head (see the module docstring)."""
    head = head_name(model)
    found: list[Block] = []
    for name, child in model.named_children():
        if name == head or not _has_params(child):
            continue
        if not isinstance(child, nn.Sequential):
            found.append(Block(name, [child]))
        elif any(len(list(c.children())) for c in child.children()):
            named = child.named_children()
            found += [Block(f"{name}.{n}", [c]) for n, c in named if _has_params(c)]
        else:  # single layers: a block ends with each pooling layer
            current = Block("")
            for n, c in child.named_children():
                current.modules.append(c)
                current.name = f"{name}.{n}"
                if isinstance(c, POOLS):
                    found.append(current)
                    current = Block("")
            if current.modules:
                found.append(current)
    return found


def cut_points(model: nn.Module) -> list[str]:
    """The names ``transfer.cut_at`` accepts: the backbone's top-level modules with parameters
    and, in its Sequential containers, every child."""
    head = head_name(model)
    names = []
    for name, child in model.named_children():
        if name == head or not _has_params(child):
            continue
        names.append(name)
        if isinstance(child, nn.Sequential):
            names += [f"{name}.{n}" for n, _ in child.named_children()]
    return names


def cut(model: nn.Module, cut_at: str, num_classes: int, channels: int, image_size: int) -> str:
    """Keep ``model`` up to ``cut_at`` (a name of :func:`cut_points`, or K for the first K
    blocks), drop what follows and put a new linear head of the right size; return the name."""
    choices, unit = cut_points(model), blocks(model)
    if cut_at.isdigit() and 1 <= int(cut_at) <= len(unit):
        cut_at = unit[int(cut_at) - 1].name
    if cut_at not in choices:
        raise CnnlabError(
            f"transfer.cut_at={cut_at!r} is not a layer of {type(model).__name__} where it can be "
            f"cut. Choose one of {', '.join(choices)}, or a number of blocks from 1 to "
            f"{len(unit)} (the blocks: {', '.join(b.name for b in unit)})."
        )
    head = head_name(model)
    parts = cut_at.split(".")
    for depth in range(len(parts), 0, -1):
        parent = model.get_submodule(".".join(parts[: depth - 1]))
        names = [n for n, _ in parent.named_children()]
        for later in names[names.index(parts[depth - 1]) + 1 :]:
            if isinstance(parent, nn.Sequential):
                delattr(parent, later)
            elif later != head and _has_params(getattr(parent, later)):
                # Keeps the model's own forward: the dropped stage passes its input on.
                setattr(parent, later, nn.Identity())
    blank = torch.zeros(2, channels, image_size, image_size)
    features = head_input(model, model.get_submodule(head), blank)
    if features.dim() != 2:
        raise CnnlabError(
            f"The classifier of {type(model).__name__} takes {features.dim()}-d maps, not feature "
            "vectors: transfer=partial needs a model whose head is a dense classifier."
        )
    setattr(model, head, nn.Linear(features.shape[1], num_classes))
    return cut_at


def lr_scales(model: nn.Module, backbone_scale: float, layer_decay: float | None) -> dict:
    """Per-parameter learning-rate factors: ``backbone_scale`` for the backbone, times
    ``layer_decay ** k`` for the block k blocks below the head (k = 1 for the top block)."""
    scales = {}
    unit = blocks(model)
    for depth, block in enumerate(reversed(unit), start=1):
        factor = backbone_scale * (layer_decay**depth if layer_decay else 1.0)
        for module in block.modules:
            for p in module.parameters():
                scales[id(p)] = factor
    return {n: scales[id(p)] for n, p in model.named_parameters() if id(p) in scales}


def backbone(model: nn.Module) -> Iterator[nn.Module]:
    head = head_name(model)
    return (child for name, child in model.named_children() if name != head)


class TwoStage(L.Callback):
    """At epoch ``epoch``: unfreeze ``blocks`` and train them in new optimizer parameter groups
    at ``lr``, with the weight decay of ``optimizer`` (the optimizer group's config; the schedule
    continues, cnnlab.optim.factory.add_param_groups)."""

    def __init__(
        self, unit: list[Block], epoch: int, lr: float, keep_bn_frozen: bool, optimizer: DictConfig
    ) -> None:
        self.unit, self.epoch, self.lr, self.keep_bn_frozen = unit, epoch, lr, keep_bn_frozen
        self.optimizer = optimizer
        _, self.weight_decay, self.decay_norm_and_bias = group_settings(optimizer)
        self.switched = False

    def switch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        modules = [m for b in self.unit for m in b.modules]
        unfreeze(modules, self.keep_bn_frozen, training=pl_module.training)
        named = [(n, p) for m in modules for n, p in m.named_parameters()]
        exempt = decay_exempt(pl_module.model, self.optimizer)
        groups = parameter_groups(
            named, self.weight_decay, self.decay_norm_and_bias, self.lr, None, exempt
        )
        configs = trainer.lr_scheduler_configs
        add_param_groups(trainer.optimizers[0], configs[0].scheduler if configs else None, groups)
        self.switched = True
        rank_zero_info(
            f"transfer: two_stage, epoch {trainer.current_epoch}: training "
            f"{', '.join(b.name for b in self.unit)} at lr {self.lr:g} too\n"
            f"{parameter_table(pl_module.model)}"
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resuming after the switch: the optimizer state to restore has the stage-2 groups.
        if self.switched:
            self.switch(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and not self.switched:
            self.switch(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"switched": self.switched}

    def load_state_dict(self, state_dict: dict) -> None:
        self.switched = state_dict["switched"]


def check(cfg: DictConfig, augmented: bool) -> TransferStrategy:
    """The strategy, after refusing options that it would ignore."""
    strategy = TransferStrategy(cfg.strategy)
    only = {
        "cut_at": (TransferStrategy.partial,),
        "cache_features": (TransferStrategy.feature_extract,),
        "init_from": tuple(s for s in TransferStrategy if s is not TransferStrategy.scratch),
    }
    for key, strategies in only.items():
        if cfg[key] and strategy not in strategies:
            raise CnnlabError(
                f"transfer.{key}={cfg[key]} does nothing with transfer={strategy.value}: it is an "
                f"option of transfer={' or '.join(s.value for s in strategies)}."
            )
    if strategy is TransferStrategy.partial and not cfg.cut_at:
        raise CnnlabError("transfer=partial needs transfer.cut_at=<layer name or block count>.")
    if cfg.cache_features and augmented:
        raise CnnlabError(
            "transfer.cache_features=true needs augmentation=none: cached features are those of "
            "the unaugmented images."
        )
    return strategy


@dataclass
class TransferPlan:
    """What a strategy hands to training: the callbacks it needs, per-parameter learning-rate
    factors (by parameter name, for cnnlab.optim.factory), the report of the weights loaded
    (None without any) and, with ``cache_features``, the cache standing in for the frozen
    backbone while fitting."""

    strategy: TransferStrategy
    callbacks: list[L.Callback] = field(default_factory=list)
    lr_scales: dict[str, float] = field(default_factory=dict)
    load_report: LoadReport | None = None
    feature_cache: FeatureCache | None = None


def prepare(
    model: nn.Module,
    cfg: DictConfig,
    data: DataSpec,
    optimizer: DictConfig,
    augmented: bool = False,
    load: bool = True,
) -> TransferPlan:
    """Load the weights ``cfg`` names into ``model``, cut and freeze it as its strategy says, and
    print what each part trains; return the plan for training (``optimizer`` is the optimizer
    group's config). ``load=False`` builds the architecture alone, for a checkpoint to fill."""
    cfg = OmegaConf.merge(OmegaConf.structured(TransferConfig), cfg)  # older runs' configs too
    strategy = check(cfg, augmented)
    # A model builder that loaded a library's weights reports it on the model it returns, as
    # timm's models carry their pretrained_cfg (cnnlab.models.backbones).
    report = getattr(model, "weights_report", None)
    if load and cfg.init_from:
        state, source = resolve(cfg.init_from)
        report = load_weights(model, state, source)
    if report is not None:
        rank_zero_info(f"transfer: {report}")
    elif load and strategy is not TransferStrategy.scratch:
        raise CnnlabError(
            f"transfer={strategy.value} starts from pretrained weights, and none are given. Set "
            "transfer.init_from=<weights file, run directory or torchvision weights name> or the "
            "model's weights (model=torchvision model.weights=IMAGENET1K_V1, model=timm "
            "model.pretrained=true or model.weights_file=<file>)."
        )
    plan = TransferPlan(strategy, load_report=report)
    if strategy is TransferStrategy.partial:
        kept = cut(model, str(cfg.cut_at), data.num_classes, data.channels, data.image_size)
        if load:
            head = getattr(model, head_name(model))
            rank_zero_info(f"transfer: cut after {kept}; new head {head}")
    frozen = {TransferStrategy.feature_extract, TransferStrategy.two_stage}
    if strategy in frozen or (strategy is TransferStrategy.partial and cfg.freeze_kept):
        freeze(backbone(model))
    elif strategy is not TransferStrategy.scratch and cfg.keep_bn_frozen:
        unfreeze(backbone(model), keep_norm_frozen=True, training=model.training)
    if strategy is TransferStrategy.two_stage:
        unit = blocks(model)
        top = unit[-cfg.unfreeze_blocks :] if cfg.unfreeze_blocks else unit
        plan.callbacks.append(
            TwoStage(top, cfg.unfreeze_epoch, cfg.stage2_lr, cfg.keep_bn_frozen, optimizer)
        )
    if cfg.backbone_lr_scale != 1.0 or cfg.layer_decay:
        plan.lr_scales = lr_scales(model, cfg.backbone_lr_scale, cfg.layer_decay)
    if cfg.cache_features:
        plan.feature_cache = FeatureCache(model, head_name(model))
        plan.callbacks.append(FeatureCacheCallback(plan.feature_cache))
    if load:  # for training; a rebuilt model's checkpoint says nothing about it
        rank_zero_info(f"transfer: {strategy.value}\n{parameter_table(model)}")
    return plan
