"""GoogLeNet (Inception v1), SE-Inception and Inception v3: the paper's table, parameter counts
against the references, equivalence with torchvision, output conventions at several input sizes,
and the auxiliary losses through the LightningModule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision import models as tvm

from cnnlab.data.spec import DataSpec
from cnnlab.errors import CnnlabError
from cnnlab.models.googlenet import GOOGLENET_TABLE, GoogLeNet, Inception
from cnnlab.models.inception_v3 import InceptionV3
from cnnlab.models.se import SqueezeExcitation
from cnnlab.tracking.reporting import model_cost
from cnnlab.training.module import ClassificationModule
from conftest import CONF

GOOGLENET_PRESETS = ["googlenet", "googlenet_naive", "googlenet_torchvision", "se_googlenet"]
# Table 1's output column for inception (3a) to (5b): channels and side of the maps at 224x224.
TABLE_1_OUTPUTS = {
    "3a": (256, 28), "3b": (480, 28),
    "4a": (512, 14), "4b": (512, 14), "4c": (512, 14), "4d": (528, 14), "4e": (832, 14),
    "5a": (832, 7), "5b": (1024, 7),
}  # fmt: skip


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def preset(name: str, num_classes: int = 10, in_chans: int = 3, **overrides) -> nn.Module:
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    cfg.num_classes, cfg.in_chans = num_classes, in_chans
    return instantiate(OmegaConf.merge(cfg, overrides))


def randomise_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Random BatchNorm scales and shifts, and running statistics set to those of a batch, so
    that eval-mode outputs depend on every BatchNorm buffer and are of order one."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.momentum = None  # a cumulative average: one batch sets the statistics
            bn.reset_running_stats()
        model.train()(x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def record_calls(*modules: nn.Module) -> list[str]:
    calls: list[str] = []
    for i, m in enumerate(modules):
        m.register_forward_hook(lambda *_, i=i: calls.append(f"aux{i + 1}"))
    return calls


@pytest.fixture(scope="module")
def googlenets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: preset(name) for name in GOOGLENET_PRESETS}


def test_inception_modules_give_table_1_outputs():
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False).eval()
    shapes = {}
    for name in GOOGLENET_TABLE:
        module = getattr(model, f"inception{name}")
        module.register_forward_hook(lambda _m, _i, out, n=name: shapes.update({n: out.shape}))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert shapes == {n: (1, c, s, s) for n, (c, s) in TABLE_1_OUTPUTS.items()}
    assert {n: getattr(model, f"inception{n}").out_channels for n in GOOGLENET_TABLE} == {
        n: c for n, (c, _) in TABLE_1_OUTPUTS.items()
    }
    assert isinstance(model.lrn1, nn.LocalResponseNorm)
    assert isinstance(model.lrn2, nn.LocalResponseNorm)
    assert model.dropout.p == 0.4 and GoogLeNet().aux1.dropout.p == 0.7


def test_bottleneck_divides_the_5x5_cost_by_ten():
    """The seed text's example: the 5x5 branch of inception (3a) on 28x28x192 maps."""
    naive = Inception(192, GOOGLENET_TABLE["3a"], bottleneck=False)
    reduced = Inception(192, GOOGLENET_TABLE["3a"], bottleneck=True)
    assert naive.branch3.conv.weight.numel() == 5 * 5 * 192 * 32 == 153_600
    assert sum(c.conv.weight.numel() for c in reduced.branch3) == 15_872
    # The naive pooling branch passes its 192 channels on: 64 + 128 + 32 + 192.
    assert naive.out_channels == 416 and reduced.out_channels == 256
    with torch.no_grad():
        assert naive(torch.randn(1, 192, 7, 7)).shape == (1, 416, 7, 7)
        assert reduced(torch.randn(1, 192, 7, 7)).shape == (1, 256, 7, 7)


def test_paper_googlenet_parameter_count():
    tv_no_aux = n_params(tvm.googlenet(weights=None, aux_logits=False, init_weights=False))
    assert tv_no_aux == 6_624_904
    # torchvision's count, corrected for its departures from the paper: 5x5 instead of 3x3
    # kernels behind the 5x5 reductions, one conv bias instead of BatchNorm's two parameters for
    # each of the 7,280 convolution channels (stem 64 + 64 + 192, plus every table entry).
    widths = 320 + sum(sum(f) for f in GOOGLENET_TABLE.values())
    kernel_extra = 16 * sum(f.ch5x5red * f.ch5x5 for f in GOOGLENET_TABLE.values())
    assert widths == 7_280
    paper_no_aux = tv_no_aux + kernel_extra - widths
    assert paper_no_aux == 6_998_552
    assert n_params(GoogLeNet(aux_logits=False)) == paper_no_aux
    # Each auxiliary head: 1x1 conv to 128 (with bias), FC 2048 -> 1024, FC 1024 -> 1000.
    aux = [c * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for c in (512, 528)]
    assert n_params(GoogLeNet(aux_logits=True)) == paper_no_aux + sum(aux) == 13_378_280


def test_naive_googlenet_widths_grow(googlenets):
    naive = googlenets["googlenet_naive"]
    widths = [getattr(naive, f"inception{n}").out_channels for n in GOOGLENET_TABLE]
    assert widths == [416, 832, 1280, 1728, 2176, 2640, 3344, 4048, 4944]
    assert naive.fc.in_features == 4944
    assert n_params(naive) > 9 * n_params(googlenets["googlenet"])


@pytest.mark.parametrize("aux_logits", [True, False])
def test_torchvision_preset_has_torchvisions_parameter_count(aux_logits):
    tv = tvm.googlenet(weights=None, aux_logits=aux_logits, init_weights=False)
    ours = preset("googlenet_torchvision", 1000, 3, aux_logits=aux_logits)
    assert n_params(ours) == n_params(tv)
    assert n_params(ours) == (6_624_904 + (6_379_984 if aux_logits else 0))


def test_torchvision_preset_loads_torchvisions_state_dict_and_gives_its_logits():
    torch.manual_seed(0)
    tv = tvm.googlenet(weights=None, aux_logits=True, init_weights=True)
    randomise_batchnorm(tv, torch.randn(8, 3, 64, 64))
    ours = preset("googlenet_torchvision", 1000, 3).eval()
    small, x = torch.randn(2, 3, 64, 64), torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(small) - tv(small)).abs().max() > 1e-2  # not equal before loading
        ours.load_state_dict(tv.state_dict())
        expected, got = tv(x), ours(x)
    assert expected.std() > 0.05
    assert (got - expected).abs().max() < 1e-4


def test_torchvision_preset_training_outputs_match_torchvisions():
    """With dropout off, training mode (BatchNorm on batch statistics) gives torchvision's
    main and auxiliary logits too: the auxiliary heads pool adaptively, like torchvision's."""
    torch.manual_seed(0)
    tv = tvm.googlenet(
        weights=None, aux_logits=True, init_weights=False, dropout=0.0, dropout_aux=0.0
    )
    ours = preset("googlenet_torchvision", 1000, 3, dropout=0.0, aux_dropout=0.0)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        main, aux2, aux1 = tv.train()(x)
        got = ours.train()(x)
    assert len(got) == 3
    for a, b in zip(got, (main, aux1, aux2), strict=True):
        assert (a - b).abs().max() < 1e-4


def test_se_inception_adds_one_se_block_per_module():
    r = 16
    base, se = GoogLeNet(10, 3), GoogLeNet(10, 3, se_reduction=r)
    channels = [c for c, _ in TABLE_1_OUTPUTS.values()]
    expected = sum(2 * c * (c // r) + c // r + c for c in channels)
    assert n_params(se) - n_params(base) == expected == 480_103
    for name, c in zip(GOOGLENET_TABLE, channels, strict=True):
        block = getattr(se, f"inception{name}").se
        assert isinstance(block, SqueezeExcitation) and block.fc1.in_channels == c
    torch.manual_seed(0)
    assert n_params(preset("se_googlenet", 10, 3)) == n_params(se)


def test_se_rescales_the_concatenated_output():
    torch.manual_seed(0)
    module = Inception(192, GOOGLENET_TABLE["3a"], se_reduction=16).eval()
    x = torch.randn(2, 192, 7, 7)
    with torch.no_grad():
        nn.init.zeros_(module.se.fc2.weight)
        nn.init.constant_(module.se.fc2.bias, 30.0)  # sigmoid ~ 1: the plain concatenation
        plain = module(x)
        nn.init.constant_(module.se.fc2.bias, -30.0)  # sigmoid ~ 0: every channel shut
        shut = module(x)
    assert plain.abs().max() > 0.1 and shut.abs().max() < 1e-9


@pytest.mark.parametrize("name", GOOGLENET_PRESETS)
def test_googlenet_presets_at_small_sizes(googlenets, name):
    model = googlenets[name]
    calls = record_calls(model.aux1, model.aux2)
    with torch.no_grad():
        for size in (32, 64):
            x = torch.randn(2, 3, size, size)
            out = model.train()(x)
            assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 10)] * 3
            assert calls == ["aux1", "aux2"]
            calls.clear()
            logits = model.eval()(x)
            assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
            assert calls == []


def test_googlenet_without_aux_and_one_channel():
    model = GoogLeNet(7, 1, aux_logits=False)
    assert model.aux1 is None and model.aux2 is None
    with torch.no_grad():
        out = model.train()(torch.randn(2, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


def test_googlenet_min_input_size(googlenets):
    size = googlenets["googlenet"].min_input_size
    with torch.no_grad():
        assert googlenets["googlenet"].eval()(torch.randn(1, 3, size, size)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            googlenets["googlenet"](torch.randn(1, 3, size - 1, size - 1))
        # torchvision's 2x2 pooling after 4e halves even a 1x1 map.
        out = googlenets["googlenet_torchvision"].train()(torch.randn(2, 3, 15, 15))
        assert [o.shape for o in out] == [(2, 10)] * 3


def test_small_input_googlenet_keeps_the_stage_sizes_of_a_four_times_larger_input():
    """A stride-1 stem without the first pooling: 28x28 gives the maps 112x112 gives the paper's
    network, and 8x8 is the least it takes (31x31 for the paper's stem)."""
    small = GoogLeNet(10, 1, width=0.125, small_input=True).eval()
    paper = GoogLeNet(10, 1, width=0.125).eval()
    sizes = {}
    for name, net, size in (("small", small, 28), ("paper", paper, 112)):
        hook = net.inception4a.register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-1])
        )
        with torch.no_grad():
            net(torch.randn(1, 1, size, size))
        hook.remove()
    assert sizes == {"small": 7, "paper": 7}
    assert small.min_input_size == 8
    with torch.no_grad():
        assert small(torch.randn(1, 1, 8, 8)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            small(torch.randn(1, 1, 7, 7))
    # Every width of table 1 scaled: the 3a module's 1x1 branch has 64 / 8 filters.
    assert small.inception3a.branch1.conv.out_channels == 8


def test_googlenet_aux_pooling_follows_the_paper_at_224():
    """The 14x14 maps of a 224 input go through the 5x5/3 pooling, not the adaptive one."""
    torch.manual_seed(0)
    paper = GoogLeNet(10, 3).aux1.eval()
    adaptive = GoogLeNet(10, 3, aux_adaptive_pool=True).aux1.eval()
    adaptive.load_state_dict(paper.state_dict())
    x = torch.randn(2, 512, 14, 14)
    pooled = F.avg_pool2d(x, 5, stride=3)
    with torch.no_grad():
        assert torch.allclose(paper(x), adaptive(pooled), atol=1e-6)
        assert not torch.allclose(paper(x), adaptive(x), atol=1e-4)


@pytest.mark.parametrize("aux_logits", [True, False])
def test_inception_v3_parameter_count_and_aux_switch(aux_logits):
    tv = tvm.inception_v3(weights=None, aux_logits=aux_logits, init_weights=False)
    ours = InceptionV3(1000, 3, aux_logits=aux_logits)
    # 27,161,264: torchvision's num_params for its weights, which include the auxiliary head.
    assert n_params(ours) == n_params(tv) == (27_161_264 if aux_logits else 23_834_568)
    with torch.no_grad():
        out = ours.train()(torch.randn(2, 3, 75, 75))
    assert isinstance(out, tuple) == aux_logits


def test_inception_v3_loads_torchvisions_state_dict_and_gives_its_logits():
    torch.manual_seed(0)
    tv = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False)
    grid = torch.randn(2, 768, 17, 17)  # the map the auxiliary head sees on 299x299 inputs
    # torchvision's own auxiliary head fails below 299x299: calibrate it on its 17x17 grid.
    aux, tv.AuxLogits = tv.AuxLogits, None
    randomise_batchnorm(tv, torch.randn(4, 3, 75, 75))
    randomise_batchnorm(aux, torch.randn(8, 768, 17, 17))
    tv.AuxLogits = aux
    ours = InceptionV3(1000, 3).eval()
    ours.net.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        expected = tv(x)
        assert expected.std() > 0.05
        assert (ours(x) - expected).abs().max() < 1e-4
        aux_expected = tv.AuxLogits(grid)
        assert aux_expected.std() > 1e-3
        assert (ours.net.AuxLogits(grid) - aux_expected).abs().max() < 1e-4


def test_inception_v3_outputs():
    torch.manual_seed(0)
    model = InceptionV3(10, 1)
    assert model.net.Conv2d_1a_3x3.conv.weight.shape == (32, 1, 3, 3)
    # A one-channel stem has 2 * 3 * 3 * 32 fewer weights than torchvision's.
    tv = tvm.inception_v3(weights=None, num_classes=10, init_weights=False)
    assert n_params(model) == n_params(tv) - 576
    calls = record_calls(model.net.AuxLogits)
    x = torch.randn(2, 1, InceptionV3.min_input_size, InceptionV3.min_input_size)
    with torch.no_grad():
        out = model.train()(x)
        assert type(out) is tuple and [o.shape for o in out] == [(2, 10), (2, 10)]
        assert calls == ["aux1"]
        calls.clear()
        logits = model.eval()(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
        assert calls == []


def classification_module(model: nn.Module, weight: float, channels: int, size: int):
    return ClassificationModule(
        model,
        DataSpec(num_classes=10, channels=channels, image_size=size),
        optimizer=OmegaConf.load(CONF / "optimizer" / "sgd.yaml"),
        scheduler=OmegaConf.load(CONF / "scheduler" / "none.yaml"),
        aux_loss_weight=weight,
    )


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize(
    "make,channels,size,n_aux",
    [(lambda: GoogLeNet(10, 1), 1, 32, 2), (lambda: InceptionV3(10, 3), 3, 75, 1)],
    ids=["googlenet", "inception_v3"],
)
def test_training_step_adds_weighted_aux_losses(make, channels, size, n_aux):
    torch.manual_seed(0)
    model = make()
    x, y = torch.randn(4, channels, size, size), torch.randint(0, 10, (4,))
    torch.manual_seed(1)
    main, *aux = model.train()(x)
    assert len(aux) == n_aux
    main_ce = F.cross_entropy(main, y)
    aux_ce = sum(F.cross_entropy(a, y) for a in aux)
    assert aux_ce > 0.5
    for weight in (0.3, 0.0):
        module = classification_module(model, weight, channels, size).train()
        torch.manual_seed(1)  # the same dropout masks as above
        loss = module.training_step((x, y), 0)
        assert torch.allclose(loss, main_ce + weight * aux_ce, atol=1e-5), weight
        assert loss.requires_grad

    module.eval()
    with torch.no_grad():
        logits = module(x)
        assert isinstance(model(x), torch.Tensor)
        module.validation_step((x, y), 0)
    assert logits.shape == (4, 10)


def test_googlenet_on_28px_images_names_the_size_it_needs():
    """GoogLeNet downsamples 32x: at 28 px its last pool gets a 1x1 map. The run's first forward
    pass (the model's cost) says which size it takes instead of PyTorch's pooling error."""
    model = instantiate(
        OmegaConf.load(CONF / "model" / "googlenet.yaml"), num_classes=10, in_chans=1
    )
    with pytest.raises(CnnlabError, match=r"data.image_size=28: GoogLeNet .* is (\d+): set"):
        model_cost(classification_module(model, 0.3, channels=1, size=28))
    assert model_cost(classification_module(model, 0.3, channels=1, size=64))["macs"] > 0
