"""Transfer strategies trained on real Fashion-MNIST batches: what is frozen stays bit-identical,
stage 2 starts when it should, cuts give the right heads, weights load from every kind of source."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torchvision import models as tv_models

from cnnlab.augment.pipeline import Preprocess
from cnnlab.config.schema import validate
from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.data.spec import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.inference.loading import load
from cnnlab.models.backbones import torchvision_model
from cnnlab.models.resnet import ResNet
from cnnlab.models.vgg import VGG
from cnnlab.models.weights import IMAGENET_MEAN, IMAGENET_STD, hub_dir, load_weights, resolve
from cnnlab.optim.factory import add_param_groups, build_scheduler, parameter_groups
from cnnlab.training.run import build_module, train
from cnnlab.transfer.freeze import is_frozen_norm
from cnnlab.transfer.strategies import cut, cut_points, lr_scales
from conftest import CONF, needs_fmnist, run_cli, run_dirs

pytestmark = needs_fmnist

MOBILENET_FILE = hub_dir() / "mobilenet_v2-b0353104.pth"
needs_mobilenet = pytest.mark.skipif(
    not MOBILENET_FILE.is_file(),
    reason=f"{MOBILENET_FILE} missing: python scripts/offline_assets.py --only weights puts it",
)
TINY = ["data.samples_per_class=20", "data.batch_size=32", "data.val_size=100"]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(before: dict, after: dict, prefix: str = "") -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> Path:
    """Weights of the default resnet_small with non-trivial BatchNorm statistics, standing in for
    pretrained ones."""
    torch.manual_seed(0)
    model = ResNet(10, 1, widths=[16, 32, 64], blocks=[1, 1, 1], stem_pool=True)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28) * 2 + 1)
    path = tmp_path_factory.mktemp("weights") / "resnet_small.pth"
    torch.save(model.state_dict(), path)
    return path


def fit(cfg, epochs: int = 1, batches: int = 3, callbacks=()):
    """The module of ``cfg`` after ``epochs`` short epochs of the real training loop."""
    cfg = validate(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, DataSpec.of(datamodule))
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def test_feature_extract_leaves_the_backbone_and_its_batchnorm_bit_identical(
    compose_cfg, pretrained_file
):
    cfg = compose_cfg(["transfer=feature_extract", f"transfer.init_from={pretrained_file}", *TINY])
    cfg.module.channels_last = False  # state dicts compare as they are
    module, _ = fit(cfg)
    before = torch.load(pretrained_file)
    after = module.model.state_dict()
    assert changed(before, after) == {"fc.weight", "fc.bias"}
    bns = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    module.model.train()  # what the Trainer does at every epoch: frozen BatchNorm ignores it
    assert bns and all(is_frozen_norm(m) and not m.training for m in bns)


def test_a_resnet_with_the_fc_head_trains_and_replaces_that_whole_head(
    compose_cfg, pretrained_file, tmp_path
):
    """head=fc: feature extraction trains both fully connected layers and nothing else, a cut
    replaces them with one linear layer, and weights of the other head are refused by name."""
    options = dict(widths=[16, 32, 64], blocks=[1, 1, 1], stem_pool=True, head="fc")
    torch.manual_seed(0)
    source = ResNet(10, 1, head_hidden=32, **options)
    path = tmp_path / "fc_head.pth"
    torch.save(source.state_dict(), path)
    cfg = compose_cfg(
        ["transfer=feature_extract", f"transfer.init_from={path}", "model.head=fc"]
        + ["model.head_hidden=32", *TINY]
    )
    cfg.module.channels_last = False
    module, _ = fit(cfg)
    head = {f"fc.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    assert changed(source.state_dict(), module.model.state_dict()) == head

    model = ResNet(10, 1, **options)
    cut(model, "layer2", 7, 1, 28)
    assert isinstance(model.fc, torch.nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (32 * 7 * 7, 7)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)

    with pytest.raises(CnnlabError, match=r"not in the model \(2\): fc.weight"):
        load_weights(ResNet(10, 1, **options), torch.load(pretrained_file), "gap.pth")


def test_two_stage_unfreezes_the_top_blocks_at_the_chosen_epoch(compose_cfg, pretrained_file):
    cfg = compose_cfg(
        [
            "transfer=two_stage",
            f"transfer.init_from={pretrained_file}",
            "transfer.unfreeze_epoch=1",
            "transfer.unfreeze_blocks=2",  # of conv1, bn1, layer1.0, layer2.0, layer3.0
            "optimizer.lr=0.01",
            "scheduler=cosine",
            *TINY,
        ]
    )
    states = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            states.append(snapshot(pl_module.model))

    module, trainer = fit(cfg, epochs=2, batches=2, callbacks=[Record()])
    start = torch.load(pretrained_file)
    assert changed(start, states[0]) == {"fc.weight", "fc.bias"}
    stage2 = changed(states[0], states[1])
    assert {"layer2.0.conv1.weight", "layer3.0.conv2.weight"} <= stage2
    assert all(k.startswith(("fc.", "layer2.0.", "layer3.0.")) for k in stage2)
    # BatchNorm stays frozen in the unfrozen blocks (keep_bn_frozen): statistics and affine.
    assert not any(".bn" in k or "downsample.1" in k for k in stage2)
    assert len(trainer.optimizers[0].param_groups) > 2


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "multistep", "exponential"])
def test_stage_two_groups_follow_the_rest_of_the_schedule(schedule):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    cfg = OmegaConf.load(CONF / "scheduler" / f"{schedule}.yaml")
    if schedule == "multistep":
        cfg.milestones = [1, 3]
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.1, momentum=0.9)
    scheduler = build_scheduler(optimizer, cfg, total_steps=40, steps_per_epoch=10)
    for step in range(40):
        if step == 20:
            add_param_groups(optimizer, scheduler, [{"params": model[0].parameters(), "lr": 0.01}])
        if step >= 20:
            ratio = optimizer.param_groups[1]["lr"] / optimizer.param_groups[0]["lr"]
            assert ratio == pytest.approx(0.1), step
        optimizer.step()
        scheduler.step()


def _build(family: str) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    if family == "resnet":
        return ResNet(10, 1, widths=[16, 32, 64], blocks=[1, 1, 1], stem_pool=True), 28
    return VGG(10, 1, config="A", batch_norm=True, hidden=64, pool_size=1), 32


def _check_cut_points(family: str, points: list[str]) -> None:
    """At each point: the new head takes the cut point's channels, and an SGD step on real images
    lowers the loss."""
    data = FashionMNIST(root=None, download=False)
    data.setup("test")
    images, labels = data.test_set[list(range(12))]
    for point in points:
        model, size = _build(family)
        x = torch.nn.functional.interpolate(images.float() / 255, size=size)
        with torch.no_grad():
            full = copy.deepcopy(model).eval()
            outputs = []
            layer = full.get_submodule(point)
            layer.register_forward_hook(lambda m, a, o, into=outputs: into.append(o))
            full(x)
        cut(model, point, 7, 1, size)
        head = model.fc if family == "resnet" else model.classifier
        assert (head.in_features, head.out_features) == (outputs[0].shape[1], 7), point
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        losses = []
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), labels % 7)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[1] < losses[0], (point, losses)


def test_partial_at_every_cut_point_of_a_resnet():
    _check_cut_points("resnet", cut_points(_build("resnet")[0]))


def test_partial_at_the_block_ends_of_vgg():
    # Each block ends with a max pooling (features.3, 7, 14, 21 and 28 of VGG-11 with BatchNorm);
    # features.9 is a BatchNorm layer inside a block, features.14 ends a block of two
    # convolutions. Every layer: the heavy test below.
    _check_cut_points("vgg", ["features.3", "features.9", "features.14", "features.28"])


@pytest.mark.heavy
def test_partial_at_every_cut_point_of_vgg():
    _check_cut_points("vgg", cut_points(_build("vgg")[0]))


def test_weights_from_a_file_with_prefixes_give_the_source_model_outputs(tmp_path):
    torch.manual_seed(1)
    source = ResNet(10, 1, widths=[16, 32, 64], blocks=[1, 1, 1]).eval()
    source(torch.randn(4, 1, 28, 28))  # eval: no statistics change, but a realistic forward
    state = source.state_dict()
    wrapped = {f"module._orig_mod.{k}": v for k, v in state.items()}
    torch.save(wrapped, tmp_path / "w.pth")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    ckpt = {"state_dict": {**{f"model.{k}": v for k, v in state.items()}, "other.x": torch.ones(1)}}
    torch.save(ckpt, tmp_path / "w.ckpt")
    x = torch.randn(3, 1, 28, 28)
    for name in ("w.pth", "w.safetensors", "w.ckpt"):
        target = ResNet(10, 1, widths=[16, 32, 64], blocks=[1, 1, 1]).eval()
        report = load_weights(target, *resolve(str(tmp_path / name)))
        assert len(report.loaded) == len(state) and not report.reinitialised, name
        assert torch.equal(target(x), source(x)), name
    # Another class count: the classifier is re-initialised and reported, the rest loads.
    other = ResNet(4, 1, widths=[16, 32, 64], blocks=[1, 1, 1])
    report = load_weights(other, *resolve(str(tmp_path / "w.pth")))
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert torch.equal(other.layer3[0].conv2.weight, source.layer3[0].conv2.weight)


@needs_mobilenet
def test_torchvision_weights_from_the_hub_cache_equal_torchvision_s_model():
    weights = tv_models.MobileNet_V2_Weights.IMAGENET1K_V1
    reference = tv_models.mobilenet_v2(weights=weights).eval()
    x = torch.rand(2, 3, 32, 32)
    via_init = torchvision_model("mobilenet_v2", 1000, 3).eval()
    report = load_weights(via_init, *resolve("MobileNet_V2_Weights.IMAGENET1K_V1"))
    assert len(report.loaded) == len(reference.state_dict())
    assert torch.equal(via_init(x), reference(x))
    # model.weights, grey input: the summed RGB filters see a grey image as the RGB ones see it
    # in colour; the classifier is new.
    grey = torchvision_model("mobilenet_v2", 10, 1, weights="IMAGENET1K_V1").eval()
    assert grey.weights_report.reinitialised == ["classifier.1.weight", "classifier.1.bias"]
    assert grey.weights_report.adapted == ["features.0.0.weight"]
    g = x[:, :1]
    torch.testing.assert_close(grey.features(g), reference.features(g.expand(-1, 3, -1, -1)))


def test_weights_of_an_earlier_run_give_its_outputs(compose_cfg, tmp_path):
    results = train(
        compose_cfg(
            [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
            + ["trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=csv"]
        )
    )
    assert results["status"] == "completed"
    earlier = load(results["run_dir"], device="cpu")
    cfg = validate(compose_cfg(["transfer=finetune", f"transfer.init_from={results['run_dir']}"]))
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, DataSpec.of(datamodule)).eval()
    module.preprocess.load_state_dict(earlier.module.preprocess.state_dict())
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    x = earlier.inputs(images)
    assert torch.equal(module(x), earlier.module(x))


def test_feature_cache_trains_the_head_as_the_uncached_path(compose_cfg, pretrained_file):
    heads = {}
    for cache in (False, True):
        cfg = compose_cfg(
            ["transfer=feature_extract", f"transfer.init_from={pretrained_file}", *TINY]
            + [f"transfer.cache_features={cache}"]
        )
        module, _ = fit(cfg, epochs=3, batches=4)
        heads[cache] = module.model.fc.weight.detach()
    torch.testing.assert_close(heads[True], heads[False], atol=1e-6, rtol=1e-5)
    assert not torch.equal(heads[True], torch.load(pretrained_file)["fc.weight"])


def test_bad_transfer_inputs_name_what_is_accepted(compose_cfg, pretrained_file, tmp_path):
    def error(overrides) -> str:
        cfg = validate(compose_cfg([*TINY, *overrides]))
        with pytest.raises((CnnlabError, InstantiationException)) as info:
            build_module(cfg, DataSpec.of(instantiate(cfg.data)))
        # Errors raised while Hydra instantiates the model come wrapped (cnnlab-train unwraps).
        return str(info.value.__cause__ or info.value)

    assert "no such file or run directory" in error(
        ["transfer=finetune", f"transfer.init_from={tmp_path / 'nope.pth'}"]
    )
    wrong = error(["model=resnet20", "transfer=finetune", f"transfer.init_from={pretrained_file}"])
    assert "do not fit the model ResNet" in wrong and "layer1.1.conv1.weight" in wrong
    bad_cut = error(
        ["transfer=partial", "transfer.cut_at=layer7", f"transfer.init_from={pretrained_file}"]
    )
    assert "'layer7'" in bad_cut and "layer1, layer1.0, layer2" in bad_cut
    assert "none are given" in error(["transfer=feature_extract"])
    assert "augmentation=none" in error(
        ["transfer=feature_extract", "transfer.cache_features=true", "augmentation=basic"]
        + [f"transfer.init_from={pretrained_file}"]
    )
    assert "IMAGENET1K_V1" in error(
        ["model=torchvision", "model.name=mobilenet_v2", "model.weights=IMAGENET9K"]
    )


def test_torchvision_weights_offline_say_where_they_were_looked_for(
    compose_cfg, tmp_path, monkeypatch
):
    # A fresh, empty hub, and a proxy that refuses every connection: offline for sure.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    overrides = ["model=torchvision", "model.name=resnet18", "model.weights=DEFAULT"]
    cfg = validate(compose_cfg(overrides))
    with pytest.raises(InstantiationException) as info:
        build_module(cfg, DataSpec.of(instantiate(cfg.data)))
    message = str(info.value.__cause__)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "transfer.init_from" in message


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (CONF / "experiment" / "transfer").glob("*.yaml"))
)
def test_every_transfer_experiment_composes(compose_cfg, name):
    if name == "cases_pretrain" and "classes" not in inspect.signature(FashionMNIST).parameters:
        pytest.skip("needs the data.classes filter of the data modules")
    cfg = validate(compose_cfg([f"experiment=transfer/{name}"]))
    assert cfg.transfer.strategy


@needs_mobilenet
def test_imagenet_mobilenet_feature_extraction_from_the_command_line(tmp_path):
    proc = run_cli(
        [
            "model=torchvision",
            "model.name=mobilenet_v2",
            "model.weights=IMAGENET1K_V1",
            "transfer=feature_extract",
            "transfer.cache_features=true",
            "data.image_size=32",
            "data.batch_size=64",
            "data.eval_batch_size=100",
            "debug=fdr",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "311 tensors loaded, 2 re-initialised" in proc.stdout + proc.stderr
    assert "features" in proc.stdout + proc.stderr and "frozen" in proc.stdout + proc.stderr
    assert run_dirs(tmp_path)


def test_discriminative_learning_rates_decay_towards_the_input():
    model = ResNet(10, 1, widths=[16, 32, 64], blocks=[1, 1, 1])
    scales = lr_scales(model, backbone_scale=0.1, layer_decay=0.5)
    groups = parameter_groups(model.named_parameters(), 0.0, True, lr=1.0, lr_scales=scales)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.fc.weight)] == 1.0
    assert lr_of[id(model.layer3[0].conv1.weight)] == pytest.approx(0.1 * 0.5)
    assert lr_of[id(model.layer1[0].conv1.weight)] == pytest.approx(0.1 * 0.5**3)
    assert lr_of[id(model.conv1.weight)] == pytest.approx(0.1 * 0.5**5)  # blocks: conv1, bn1...
    assert len(lr_of) == len(list(model.parameters()))


@needs_mobilenet
@pytest.mark.parametrize("normalize", ["pretrained", "dataset"])
def test_imagenet_weights_get_imagenet_input_statistics(compose_cfg, normalize):
    """MobileNetV2's real ImageNet weights fine-tuned on grey Fashion-MNIST: the inputs are
    normalised with ImageNet's statistics (averaged over RGB for the summed first filters),
    unless data.normalize=dataset asks for the data set's."""
    cfg = compose_cfg(
        ["experiment=transfer/mnv2_finetune", f"data.normalize={normalize}", "data.image_size=32"]
        + TINY
    )
    module, trainer = fit(cfg, batches=1)
    mean, std = module.preprocess.mean.tolist(), module.preprocess.std.tolist()
    if normalize == "pretrained":
        assert mean == pytest.approx([sum(IMAGENET_MEAN) / 3])
        assert std == pytest.approx([sum(IMAGENET_STD) / 3])
    else:
        dataset = trainer.datamodule
        assert (mean, std) == (pytest.approx(dataset.mean), pytest.approx(dataset.std))
        assert mean != pytest.approx([sum(IMAGENET_MEAN) / 3], abs=0.01)


def test_weights_of_an_earlier_run_carry_its_input_statistics(tmp_path):
    """A cnnlab checkpoint's Preprocess statistics travel with its weights into the next run;
    a plain weights file is taken for ImageNet's."""
    model = ResNet(10, 1, widths=[16, 32, 64], blocks=[1, 1, 1], stem_pool=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({"preprocess.mean": torch.tensor([0.3]), "preprocess.std": torch.tensor([0.2])})
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    report = load_weights(copy.deepcopy(model), *resolve(str(tmp_path / "run.ckpt")))
    assert report.stats.mean == pytest.approx([0.3]) and report.stats.std == pytest.approx([0.2])
    report = load_weights(copy.deepcopy(model), *resolve(str(tmp_path / "plain.pth")))
    assert report.stats.mean == IMAGENET_MEAN and "assumed" in report.stats.origin


LITE0_FILE = hub_dir() / "efficientnet-lite0-57934424.pth"
PHOTOS = Path(__file__).parents[1] / "data" / "photos"
needs_lite0 = pytest.mark.skipif(
    not LITE0_FILE.is_file() or not (PHOTOS / "chelsea.png").is_file(),
    reason="python scripts/offline_assets.py --only lite0 --only photos puts the files in place",
)


@needs_lite0
def test_efficientnet_lite0_weights_in_efficientnet_pytorch_names_classify_real_photos():
    """The Lite0 file's 296 tensors, renamed to timm's by name and block type and checked key
    by key, give timm's efficientnet_lite0 its ImageNet classes: chelsea.png is a cat (281-285
    are ImageNet's domestic cats), coffee.png an espresso (967)."""
    model = instantiate(
        {
            "_target_": "cnnlab.models.backbones.timm_model",
            "name": "efficientnet_lite0",
            "num_classes": 1000,
            "in_chans": 3,
            "weights_file": LITE0_FILE.name,
        }
    ).eval()
    report = model.weights_report
    assert len(report.loaded) == 296 and not report.reinitialised
    preprocess = Preprocess(3, 224)
    preprocess.set_stats(report.stats.mean, report.stats.std)
    photos = [
        torch.from_numpy(np.array(Image.open(PHOTOS / name).convert("RGB"))).permute(2, 0, 1)
        for name in ("chelsea.png", "coffee.png")
    ]
    with torch.no_grad():
        classes = [model(preprocess(photo[None])).argmax(1).item() for photo in photos]
    assert classes[0] in range(281, 286) and classes[1] == 967


@needs_lite0
def test_efficientnet_pytorch_names_are_refused_by_another_architecture(tmp_path):
    with pytest.raises(CnnlabError, match="only a timm EfficientNet"):
        load_weights(ResNet(10, 1), *resolve(str(LITE0_FILE)))
    wrong = instantiate(
        {
            "_target_": "cnnlab.models.backbones.timm_model",
            "name": "efficientnet_b0",
            "num_classes": 10,
            "in_chans": 1,
        }
    )
    with pytest.raises(CnnlabError, match="do not fit the model"):
        load_weights(wrong, *resolve(str(LITE0_FILE)))


@needs_lite0
def test_two_stage_recipe_trains_on_the_real_lite0_weights(compose_cfg):
    cfg = compose_cfg(
        [
            "experiment=transfer/lite0_two_stage",
            "transfer.unfreeze_epoch=1",
            "data.image_size=32",
            *TINY,
        ]
    )
    states = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            states.append(snapshot(pl_module.model))

    module, _ = fit(cfg, epochs=2, batches=1, callbacks=[Record()])
    assert module.model.weights_report.stats.mean == pytest.approx([127 / 255] * 3)
    assert module.preprocess.mean.tolist() == pytest.approx([127 / 255])
    assert changed(states[0], states[1], "blocks.")  # stage two trains the blocks too
    assert not changed(states[0], states[1], "blocks.6.0.bn")  # with BatchNorm frozen
