"""The ResNet family: parameter counts against the papers, torchvision and timm; torchvision's
and timm's weights giving the same logits; option A shortcuts, plain twins and SE blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.config.schema import validate
from cnnlab.models.resnet import BasicBlock, Block, Bottleneck, ResNet, ZeroPadShortcut
from conftest import CONF

CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
CONFIGS = [
    "resnet_small",
    *(f"resnet{d}" for d in CIFAR_DEPTHS),
    *(f"resnet{d}" for d in IMAGENET_DEPTHS),
    "plain20",
    "plain56",
    "plain18",
    "se_resnet18",
    "se_resnet50",
]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(
    name: str, classes: int = 10, channels: int = 3, meta: bool = False, **overrides
) -> ResNet:
    """The model of conf/model/<name>.yaml for ``classes`` classes and ``channels`` channels,
    with ``overrides`` of its keys.

    On the meta device nothing is allocated nor initialised: enough to count parameters.
    """
    model = OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{name}.yaml"), overrides)
    cfg = OmegaConf.create({"data": {"num_classes": classes, "channels": channels}, "model": model})
    model_cfg = OmegaConf.to_container(cfg, resolve=True)["model"]
    if meta:
        with torch.device("meta"):
            return instantiate(model_cfg)
    return instantiate(model_cfg)


def last_bns(model: ResNet) -> list[torch.nn.BatchNorm2d]:
    return [m.last_bn for m in model.modules() if isinstance(m, Block)]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates_and_builds(compose_cfg, name):
    assert (CONF / "model" / f"{name}.yaml").read_text().startswith("# ")
    # What cnnlab-train model=<name> checks: every key and type against ResNet's signature.
    model_cfg = validate(compose_cfg([f"model={name}"])).model
    with torch.device("meta"):
        model = instantiate(model_cfg)
    assert isinstance(model, ResNet)
    assert model.fc.out_features == 10


def test_default_model_is_resnet_small_with_77754_parameters(compose_cfg):
    cfg = validate(compose_cfg([]))
    assert cfg.model._target_ == "cnnlab.models.resnet.ResNet"
    model = instantiate(cfg.model).eval()
    # Three stages of one basic block; the two that widen have a projection (option B).
    assert n_params(model) == 77_754
    assert isinstance(model.maxpool, torch.nn.MaxPool2d)
    assert all(bn.weight.abs().sum() == 0 for bn in last_bns(model))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_imagenet_depths_have_torchvision_parameters_and_names(depth):
    ours = build(f"resnet{depth}", classes=1000, meta=True)
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert n_params(ours) == n_params(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    expected = {18: 11_689_512, 50: 25_557_032}
    if depth in expected:
        assert n_params(ours) == expected[depth]


def randomise_batchnorms(model: torch.nn.Module) -> None:
    """Freshly built BatchNorms are identities in eval mode; random ones test their mapping too."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def assert_same_logits(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    randomise_batchnorms(reference)
    ours.load_state_dict(reference.state_dict())
    ours.eval()
    reference.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.std() > 1e-2, "logits too flat to tell models apart"
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_give_the_same_logits(depth):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert_same_logits(build(f"resnet{depth}", classes=1000), reference)


@pytest.mark.slow
def test_se_resnet50_is_timms_seresnet50():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("seresnet50", pretrained=False)
    ours = build("se_resnet50", classes=1000)
    assert n_params(ours) == n_params(reference) == 28_088_024
    # Same names, so the SE sits at the same place: on the residual branch after its last BN.
    assert_same_logits(ours, reference)


def cifar_count(n: int, in_chans: int = 3, classes: int = 10) -> int:
    """Parameters of the 6n+2-layer network of section 4.2 with option A shortcuts: 3x3
    convolutions without bias, each followed by a BatchNorm (scale and shift per channel), and
    the final fully connected layer. Option A adds nothing, so this is the paper's count."""
    count = 9 * in_chans * 16 + 2 * 16
    in_channels = 16
    for width in (16, 32, 64):
        count += 9 * in_channels * width + 2 * width
        count += (2 * n - 1) * (9 * width * width + 2 * width)
        in_channels = width
    return count + 64 * classes + classes


@pytest.mark.parametrize(
    "depth,paper_millions,digits",
    [(20, 0.27, 2), (32, 0.46, 2), (44, 0.66, 2), (56, 0.85, 2), (110, 1.7, 1)],
)
def test_cifar_counts_are_the_papers(depth, paper_millions, digits):
    """Section 4.2 / table 6 gives 0.27M, 0.46M, 0.66M, 0.85M and 1.7M parameters."""
    count = n_params(build(f"resnet{depth}", meta=True))
    assert count == cifar_count(CIFAR_DEPTHS[depth])
    assert round(count / 1e6, digits) == paper_millions
    if depth == 20:
        assert count == 269_722


def test_option_a_is_a_parameter_free_zero_padding_identity():
    a = ResNet(blocks=(3, 3, 3), shortcut="A")
    b = ResNet(blocks=(3, 3, 3), shortcut="B")
    # Option B adds a 1x1 convolution and a BatchNorm where 16->32 and 32->64 channels.
    assert n_params(b) - n_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in a.modules())

    x = torch.randn(2, 16, 7, 7)
    y = ZeroPadShortcut(16, 2)(x)
    # A strided 3x3 convolution with padding 1 also turns 7x7 into 4x4.
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(y[:, 16:], torch.zeros(2, 16, 4, 4))
    assert a.eval()(torch.randn(2, 3, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("se_reduction", [None, 4])
def test_plain_blocks_have_no_skip_connection(block_cls, se_reduction):
    """With the residual branch silenced, a residual block is ReLU(x) and a plain one ReLU(0)."""
    channels = 8 * block_cls.expansion
    x = torch.randn(2, channels, 6, 6)
    outputs = {}
    for plain in (False, True):
        block = block_cls(channels, 8, 1, "B", plain, se_reduction).eval()
        torch.nn.init.zeros_(block.last_bn.weight)
        torch.nn.init.zeros_(block.last_bn.bias)
        with torch.no_grad():
            outputs[plain] = block(x)
    assert torch.equal(outputs[False], torch.relu(x))
    assert torch.equal(outputs[True], torch.zeros_like(x))


def test_plain_networks_have_no_shortcut_module():
    for name in ("plain20", "plain56", "plain18"):
        blocks = [m for m in build(name, meta=True).modules() if isinstance(m, Block)]
        assert blocks and all(b.downsample is None for b in blocks)
    blocks = [m for m in build("resnet20", meta=True).modules() if isinstance(m, Block)]
    assert all(b.downsample is not None for b in blocks)


def test_plain_twins_count_like_their_residual_nets():
    # Section 4.1: with option A the residual nets "have no extra parameter" over plain ones.
    assert n_params(build("plain20", meta=True)) == n_params(build("resnet20", meta=True))
    assert n_params(build("plain56", meta=True)) == n_params(build("resnet56", meta=True))
    # ResNet-18 as torchvision builds it projects (option B) where its stages widen.
    projections = sum(c * 2 * c + 2 * 2 * c for c in (64, 128, 256))
    plain18 = n_params(build("plain18", meta=True))
    assert plain18 == n_params(build("resnet18", meta=True)) - projections


def se_count(channels: int, reduction: int = 16) -> int:
    """Two 1x1 convolutions with bias, C -> C/r -> C (Hu et al. 2018, section 3)."""
    hidden = channels // reduction
    return 2 * channels * hidden + hidden + channels


@pytest.mark.parametrize(
    "name,stages",
    [
        ("resnet18", [(64, 2), (128, 2), (256, 2), (512, 2)]),
        ("resnet50", [(256, 3), (512, 4), (1024, 6), (2048, 3)]),
    ],
)
def test_se_adds_one_se_module_per_block(name, stages):
    """``stages``: (block output channels, blocks), from table 1."""
    added = n_params(build(f"se_{name}", meta=True)) - n_params(build(name, meta=True))
    assert added == sum(blocks * se_count(channels) for channels, blocks in stages)


def test_zero_init_residual_is_an_option():
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in last_bns(ResNet()))
    zero = ResNet(zero_init_residual=True, shortcut="A")
    assert all(bn.weight.abs().sum() == 0 for bn in last_bns(zero))
    # Every block starts as an identity; only the stem and the classifier shape the output.
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        stem = zero.relu(zero.bn1(zero.conv1(x)))
        assert torch.equal(zero.layer1(stem), stem)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"plain": True, "zero_init_residual": True},
        {"shortcut": "C"},
        {"block": "wide"},
        {"stem": "7x7"},
        {"widths": (16, 32), "blocks": (1, 1, 1)},
    ],
)
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        ResNet(**kwargs)


@pytest.mark.parametrize(
    "name,sizes",
    [
        ("resnet_small", [28, 32, 17]),
        ("resnet20", [28, 32, 17]),
        ("plain20", [28]),
        ("resnet18", [64, 97]),
    ],
)
def test_output_shapes(name, sizes):
    model = build(name, channels=1).eval()
    with torch.no_grad():
        for size in sizes:
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: build("resnet_small", channels=1),
        lambda: build("resnet20", channels=1),
        # The ImageNet stem and its pool on a network narrow enough to be quick.
        lambda: ResNet(in_chans=1, blocks=(1, 1, 1), stem="imagenet", stem_pool=True),
    ],
    ids=["resnet_small", "resnet20", "imagenet_stem"],
)
def test_min_input_size_trains_and_evaluates(make):
    model = make()
    size = ResNet.min_input_size
    x = torch.randn(2, 1, size, size)
    model.train()(x).sum().backward()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


# ------------------------------------------------------------- the fully connected head


def fc_head_parameters(channels: int, pool_size: int, hidden: int, classes: int) -> int:
    """Linear(C * s * s, hidden) and Linear(hidden, classes), with biases."""
    return (channels * pool_size**2 + 1) * hidden + (hidden + 1) * classes


@pytest.mark.parametrize(
    "name,classes,channels,overrides",
    [
        ("resnet20", 10, 64, {}),
        ("resnet_small", 10, 64, {"head_hidden": 32, "head_pool_size": 2}),
        ("resnet50", 1000, 2048, {}),
    ],
)
def test_fc_head_parameters_follow_the_formula(name, classes, channels, overrides):
    gap = build(name, classes=classes, meta=True)
    fc = build(name, classes=classes, meta=True, head="fc", **overrides)
    hidden, pool_size = overrides.get("head_hidden", 1024), overrides.get("head_pool_size", 7)
    expected = fc_head_parameters(channels, pool_size, hidden, classes)
    assert n_params(fc.fc) == expected
    assert n_params(fc) - n_params(gap) == expected - (channels + 1) * classes


def test_fc_head_takes_the_7x7_map_of_a_28x28_image_as_it_is():
    """The CIFAR stem without pooling and three stages turn 28x28 into 7x7: the head's pooling is
    the identity there, and pools larger maps down to 7x7."""
    model = build("resnet20", channels=1, head="fc").eval()
    seen = []
    model.avgpool.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert seen[0][0].shape == (2, 64, 7, 7)
    assert torch.equal(seen[0][1], seen[0][0])
    assert seen[1][0].shape == (2, 64, 8, 8)
    assert seen[1][1].shape == (2, 64, 7, 7)


def test_fc_head_trains_a_step():
    torch.manual_seed(0)
    model = build("resnet_small", channels=1, head="fc", head_hidden=64, dropout=0.5).train()
    first, dropout, last = model.fc[0], model.fc[2], model.fc[3]
    assert isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.5
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        torch.manual_seed(1)  # the same dropout mask both times
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert first.weight.grad.abs().sum() > 0 and last.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


def test_an_unknown_head_is_refused_with_the_accepted_ones():
    with pytest.raises(ValueError, match=r"head='mlp': choose one of gap, fc"):
        ResNet(head="mlp")


def test_drop_path_drops_whole_residual_branches_linearly_deeper():
    """Stochastic depth: rates 0 .. drop_path_rate over the blocks; in training a dropped sample
    gets its shortcut alone (its residual branch is zero), the others 1 / (1 - rate) of it; in
    evaluation the network is deterministic."""
    torch.manual_seed(0)
    model = ResNet(10, 1, blocks=[2, 2, 2], shortcut="B", drop_path_rate=0.5)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3) for b in stage]
    rates = [getattr(b.drop_path, "rate", 0.0) for b in blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    last = blocks[-1].train()
    x = torch.randn(64, last.conv1.in_channels, 4, 4)
    with torch.no_grad():
        branch, shortcut = last.se(last.residual(x)), last.downsample(x)
        torch.manual_seed(1)
        out = last(x)
    dropped = torch.isclose(out, F.relu(shortcut), atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, F.relu(shortcut + 2 * branch), atol=1e-5).flatten(1).all(1)
    assert (dropped | kept).all() and 16 < dropped.sum() < 48
    model.eval()
    image = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(image), model(image))
    with pytest.raises(ValueError, match="plain"):
        ResNet(10, 1, plain=True, drop_path_rate=0.1)
