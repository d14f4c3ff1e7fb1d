"""LeNet-5, AlexNet and VGG: the papers' parameter counts and layer shapes, and equivalence with
torchvision's AlexNet and VGG after loading their state dicts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from torch import nn

from cnnlab.config.schema import validate
from cnnlab.models.alexnet import AlexNet, local_response_norm
from cnnlab.models.lenet import LeNet5, PartialConv2d, RBFOutput, ScaledTanh, Subsampling
from cnnlab.models.vgg import CONFIGS, VGG

MODERN_LENET = dict(activation="relu", pooling="max", partial_c3=False, output="linear")
TORCHVISION_ALEXNET = dict(widths=(64, 192, 384, 256, 256), lrn=False)
VGG_VARIANTS = {  # torchvision name: (table 1 configuration, batch norm)
    "vgg11": ("A", False),
    "vgg13": ("B", False),
    "vgg16": ("D", False),
    "vgg19": ("E", False),
    "vgg11_bn": ("A", True),
    "vgg13_bn": ("B", True),
    "vgg16_bn": ("D", True),
    "vgg19_bn": ("E", True),
}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def conv_output_sizes(model: nn.Module, x: torch.Tensor) -> list[int]:
    """The height of the output of each convolution, in forward order."""
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda m, i, out: sizes.append(out.shape[-2]))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, PartialConv2d))
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sizes


# ---------------------------------------------------------------------------------------- LeNet-5


def test_lenet5_has_the_papers_parameter_counts_layer_by_layer():
    model = LeNet5(num_classes=10, in_chans=1)
    counts = {name: n_params(getattr(model, name)) for name in ("c1", "s2", "c3", "s4", "c5", "f6")}
    assert counts == {"c1": 156, "s2": 12, "c3": 1_516, "s4": 32, "c5": 48_120, "f6": 10_164}
    # The RBF prototypes were fixed -1/+1 codes, not trained: 84 per class, in a buffer.
    assert n_params(model.output) == 0 and n_params(model) == 60_000
    assert model.output.prototypes.shape == (10, 84)
    assert set(model.output.prototypes.unique().tolist()) == {-1.0, 1.0}


def test_modern_lenet5_has_61706_parameters():
    model = LeNet5(num_classes=10, in_chans=1, **MODERN_LENET)
    # C3 fully connected: 16 * (6 * 25 + 1); a linear output layer: 84 * 10 + 10.
    assert n_params(model.c3) == 2_416 and n_params(model.output) == 850
    assert n_params(model) == 61_706


# Table I of the paper: row = S2 map, column = C3 map, X = connected.
TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
"""


def test_c3_connects_s2_maps_to_c3_maps_as_table_i():
    torch.manual_seed(0)
    c3 = LeNet5().c3
    x = torch.randn(1, 6, 14, 14)
    base = c3(x)
    seen = []
    for s2_map in range(6):
        bumped = x.clone()
        bumped[:, s2_map] += 1.0
        changed = (c3(bumped) - base).abs().amax((0, 2, 3)) > 0
        seen.append("".join("X" if c else "." for c in changed.tolist()))
    assert seen == TABLE_I.split()


def test_subsampling_is_a_trainable_coefficient_times_the_2x2_sum_plus_a_bias():
    layer = Subsampling(2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, -2.0]))
        layer.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.arange(32.0).view(1, 2, 4, 4)
    out = layer(x)
    # Top-left patch of map 0: 0 + 1 + 4 + 5; bottom-right patch of map 1: 26 + 27 + 30 + 31.
    assert out[0, 0, 0, 0].item() == 0.5 * (0 + 1 + 4 + 5) + 1.0
    assert out[0, 1, 1, 1].item() == -2.0 * (26 + 27 + 30 + 31)
    assert out.shape == (1, 2, 2, 2)


def test_scaled_tanh_maps_plus_and_minus_one_to_themselves():
    f = ScaledTanh()
    assert torch.allclose(f(torch.tensor([1.0, -1.0, 0.0])), torch.tensor([1.0, -1.0, 0.0]), 1e-4)
    assert f(torch.tensor(100.0)).item() == pytest.approx(1.7159)


def test_rbf_output_is_minus_the_squared_distance_to_each_prototype():
    torch.manual_seed(0)
    rbf = RBFOutput(84, 10)
    x = torch.randn(3, 84)
    expected = -((x[:, None, :] - rbf.prototypes[None]) ** 2).sum(-1)
    assert torch.allclose(rbf(x), expected, atol=1e-4)
    assert rbf(rbf.prototypes).argmax(1).tolist() == list(range(10))


@pytest.mark.parametrize("options", [{}, MODERN_LENET], ids=["original", "modern"])
def test_lenet5_layer_sizes_on_32x32_and_padding_of_28x28(options):
    torch.manual_seed(0)
    model = LeNet5(num_classes=10, in_chans=1, **options).eval()
    # C1 28x28, C3 10x10, C5 1x1 (section II.B).
    assert conv_output_sizes(model, torch.randn(1, 1, 32, 32)) == [28, 10, 1]
    x = torch.randn(4, 1, 28, 28)
    unpadded = LeNet5(num_classes=10, in_chans=1, pad_input=False, **options).eval()
    unpadded.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), unpadded(F.pad(x, (2, 2, 2, 2), mode="replicate")))
        with pytest.raises(RuntimeError):
            unpadded(x)
        for size in (28, 32, 48):
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_lenet5_takes_colour_inputs_and_trains():
    torch.manual_seed(0)
    model = LeNet5(num_classes=4, in_chans=3)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_lenet5_rejects_unknown_options():
    for bad in (dict(activation="gelu"), dict(pooling="lp"), dict(output="softmax")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LeNet5(**bad)


# ---------------------------------------------------------------------------------------- AlexNet


@pytest.mark.parametrize(
    "options,expected",
    [
        ({}, 62_378_344),  # the paper's filters on one GPU
        ({"groups": 2}, 60_965_224),  # the paper's two-GPU network: its "60 million parameters"
        (TORCHVISION_ALEXNET, 61_100_840),  # torchvision's alexnet
    ],
    ids=["paper", "paper_two_gpus", "torchvision"],
)
def test_alexnet_parameter_counts(options, expected):
    with torch.device("meta"):
        assert n_params(AlexNet(num_classes=1000, in_chans=3, **options)) == expected


def test_alexnet_kernels_are_the_papers_with_two_gpus():
    """Section 3.5: 96 kernels of 11x11x3, 256 of 5x5x48, 384 of 3x3x256, 384 of 3x3x192 and
    256 of 3x3x192: conv2, conv4 and conv5 only see the maps on their own GPU."""
    with torch.device("meta"):
        model = AlexNet(groups=2)
    shapes = [tuple(m.weight.shape) for m in model.features if isinstance(m, nn.Conv2d)]
    assert shapes == [
        (96, 3, 11, 11),
        (256, 48, 5, 5),
        (384, 256, 3, 3),
        (384, 192, 3, 3),
        (256, 192, 3, 3),
    ]


@pytest.mark.parametrize("overlapping_pool", [True, False])
def test_alexnet_maps_are_those_of_figure_2(overlapping_pool):
    """55x55, 27x27 and three times 13x13 from a 224x224 image; 2x2 stride-2 pooling gives the
    same sizes as the overlapping 3x3 stride-2 pooling (section 3.4)."""
    model = AlexNet(num_classes=10, overlapping_pool=overlapping_pool).eval()
    x = torch.randn(1, 3, 224, 224)
    assert conv_output_sizes(model, x) == [55, 27, 13, 13, 13]
    with torch.no_grad():
        assert model.features(x).shape == (1, 256, 6, 6)
    names = [type(m).__name__ for m in model.features]
    assert names[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] * 2


def test_local_response_norm_follows_the_papers_formula():
    """b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta with k=2, n=5, alpha=1e-4,
    beta=0.75, the sum clipped at the first and last map."""
    torch.manual_seed(0)
    a = torch.randn(2, 12, 3, 3) * 30
    expected = torch.empty_like(a)
    for i in range(12):
        window = a[:, max(0, i - 2) : min(12, i + 3)]
        expected[:, i] = a[:, i] / (2 + 1e-4 * window.square().sum(1)) ** 0.75
    assert torch.allclose(local_response_norm()(a), expected, rtol=1e-5, atol=1e-6)


def test_alexnet_loads_torchvision_weights_and_gives_its_logits():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).eval()
    model = AlexNet(num_classes=1000, in_chans=3, **TORCHVISION_ALEXNET).eval()
    model.load_state_dict(reference.state_dict())
    assert n_params(model) == n_params(reference)
    with torch.no_grad():
        for size in (224, 64):
            x = torch.randn(2, 3, size, size)
            assert max_diff(model(x), reference(x)) < 1e-4


@pytest.mark.parametrize("options", [{}, {"groups": 2, "overlapping_pool": False}])
def test_alexnet_smallest_input(options):
    model = AlexNet(num_classes=10, in_chans=1, **options).eval()
    size = AlexNet.min_input_size
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
        if options.get("overlapping_pool", True):
            with pytest.raises(RuntimeError):
                model(torch.randn(2, 1, size - 1, size - 1))


# -------------------------------------------------------------------------------------------- VGG


@pytest.mark.parametrize("name", VGG_VARIANTS)
def test_vgg_parameter_counts_equal_torchvisions(name):
    config, batch_norm = VGG_VARIANTS[name]
    with torch.device("meta"):
        dense = VGG(num_classes=1000, in_chans=3, config=config, batch_norm=batch_norm)
        fcn = VGG(config=config, batch_norm=batch_norm, fully_convolutional=True)
        reference = getattr(torchvision.models, name)(weights=None)
    assert n_params(dense) == n_params(fcn) == n_params(reference)
    # Weight layers: the depth in the name (table 1 counts the three fully connected layers).
    weight_layers = [m for m in dense.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weight_layers) == int(name[3:5])


def test_vgg_parameter_counts_are_the_known_numbers():
    expected = {
        "vgg11": 132_863_336,
        "vgg13": 133_047_848,
        "vgg16": 138_357_544,
        "vgg19": 143_667_240,
        "vgg11_bn": 132_868_840,
        "vgg16_bn": 138_365_992,
    }
    with torch.device("meta"):
        for name, count in expected.items():
            config, batch_norm = VGG_VARIANTS[name]
            assert n_params(VGG(config=config, batch_norm=batch_norm)) == count, name


def randomise_batch_norm(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so that a mix-up would show."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


@pytest.fixture(scope="module")
def torchvision_vgg16() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


def meta_vgg(**options) -> nn.Module:
    """A VGG without the cost of initialising 138M weights: every weight is loaded afterwards."""
    with torch.device("meta"):
        return VGG(num_classes=1000, in_chans=3, **options).eval()


@pytest.mark.parametrize("name,size", [("vgg11", 64), ("vgg11_bn", 64), ("vgg16", 224)])
def test_vgg_loads_torchvision_weights_and_gives_its_logits(name, size, torchvision_vgg16):
    config, batch_norm = VGG_VARIANTS[name]
    if name == "vgg16":
        reference = torchvision_vgg16
    else:
        torch.manual_seed(0)
        reference = getattr(torchvision.models, name)(weights=None).eval()
        randomise_batch_norm(reference)
    model = meta_vgg(config=config, batch_norm=batch_norm)
    model.load_state_dict(reference.state_dict(), assign=True)
    x = torch.randn(2 if size < 224 else 1, 3, size, size)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) < 1e-4


def test_fully_convolutional_vgg16_loads_dense_weights_and_gives_the_same_logits(
    torchvision_vgg16,
):
    """Section 3.2: FC-4096 on 7x7x512 becomes a 7x7 convolution, the other two 1x1 ones. Up to
    224x224 the class score map is a single position, so the logits are the dense network's."""
    model = meta_vgg(config="D", fully_convolutional=True)
    model.load_state_dict(torchvision_vgg16.state_dict(), assign=True)
    assert model.classifier[0].weight.shape == (4096, 512, 7, 7)
    assert model.classifier[6].weight.shape == (1000, 4096, 1, 1)
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert max_diff(model(x), torchvision_vgg16(x)) < 1e-4


def test_fully_convolutional_vgg_averages_the_dense_scores_of_every_window():
    """On a larger input the score map has one position per window of the last feature map; the
    logits are the average of the dense classifier's scores on those windows. A map smaller than
    the kernel is stretched to it, as the dense network's adaptive pooling does."""
    torch.manual_seed(0)
    options = dict(num_classes=5, in_chans=1, config="A", hidden=16, pool_size=2)
    dense = VGG(**options).eval()
    fcn = VGG(fully_convolutional=True, **options).eval()
    fcn.load_state_dict(dense.state_dict())
    x = torch.randn(2, 1, 96, 128)  # a 3x4 feature map: 2x3 windows of 2x2
    with torch.no_grad():
        features = dense.features(x)
        windows = [
            dense.classifier(torch.flatten(features[..., i : i + 2, j : j + 2], 1))
            for i in range(2)
            for j in range(3)
        ]
        assert max_diff(fcn(x), torch.stack(windows).mean(0)) < 1e-5
        small = torch.randn(2, 1, 32, 32)  # a 1x1 feature map
        assert max_diff(fcn(small), dense(small)) < 1e-5


@pytest.mark.parametrize("large_kernels", [False, True], ids=["3x3", "large"])
@pytest.mark.parametrize("fully_convolutional", [False, True], ids=["dense", "fcn"])
def test_vgg_trains_on_small_grey_images(fully_convolutional, large_kernels):
    torch.manual_seed(0)
    model = VGG(
        num_classes=10,
        in_chans=1,
        config="A",
        batch_norm=True,
        fully_convolutional=fully_convolutional,
        hidden=64,
        pool_size=1,
        large_kernels=large_kernels,
    )
    size = VGG.min_input_size
    x, y = torch.randn(4, 1, size, size), torch.arange(4)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    assert F.cross_entropy(model(x), y) < loss
    model.eval()
    with torch.no_grad():
        assert model(x[:2]).shape == (2, 10)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 1, size - 1, size - 1))


def runs_of_3x3(config: str) -> list[list[int]]:
    """The output widths of each stack of 3x3 convolutions between two poolings of table 1."""
    runs: list[list[int]] = [[]]
    for v in CONFIGS[config][:-1]:  # every configuration ends with a pooling
        if v == "M":
            runs.append([])
        else:
            runs[-1].append(v)
    return runs


def vgg_features_parameters(config: str, batch_norm: bool, large_kernels: bool) -> int:
    """Each convolution has k * k * Cin * Cout weights and Cout biases, each BatchNorm 2 * Cout;
    a stack of k 3x3 layers becomes one (2k + 1) x (2k + 1) layer with the stack's last width."""
    total, channels = 0, 3
    for run in runs_of_3x3(config):
        layers = [(run[-1], 2 * len(run) + 1)] if large_kernels else [(v, 3) for v in run]
        for width, k in layers:
            total += k * k * channels * width + width + (2 * width if batch_norm else 0)
            channels = width
    return total


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_vgg_large_kernels_merge_each_3x3_stack_into_one_convolution(config, batch_norm):
    with torch.device("meta"):
        small = VGG(num_classes=1000, config=config, batch_norm=batch_norm)
        large = VGG(num_classes=1000, config=config, batch_norm=batch_norm, large_kernels=True)
    runs = runs_of_3x3(config)
    convs = [m for m in large.features if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [2 * len(run) + 1 for run in runs]
    assert [c.padding[0] for c in convs] == [len(run) for run in runs]
    assert [c.out_channels for c in convs] == [run[-1] for run in runs]
    bns = [m for m in large.features if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == (len(runs) if batch_norm else 0)
    assert n_params(small.features) == vgg_features_parameters(config, batch_norm, False)
    assert n_params(large.features) == vgg_features_parameters(config, batch_norm, True)
    # The classifier is unchanged: the last width is the same.
    assert n_params(large.classifier) == n_params(small.classifier)


def test_three_3x3_layers_have_27c2_weights_and_one_7x7_layer_49c2():
    """Section 2.3 on VGG-16's last stack, three 3x3 convolutions of C = 512 channels."""
    with torch.device("meta"):
        small = VGG(config="D")
        large = VGG(config="D", large_kernels=True)
    c = 512
    stack = [m for m in small.features[24:30] if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in stack] == [(3, 3)] * 3
    assert sum(m.weight.numel() for m in stack) == 27 * c**2
    last = [m for m in large.features if isinstance(m, nn.Conv2d)][-1]
    assert last.weight.shape == (c, c, 7, 7)
    assert last.weight.numel() == 49 * c**2
    # Three non-linearities against one.
    relus = [m for m in small.features[24:] if isinstance(m, nn.ReLU)]
    assert len(relus) == 3
    assert sum(isinstance(m, nn.ReLU) for m in large.features[-3:]) == 1


@pytest.mark.parametrize(
    "width,expected",
    [(0.5, [32, 64, 128, 128, 256, 256, 256, 256]), (0.1, [8, 13, 26, 26, 51, 51, 51, 51])],
)
def test_vgg_width_scales_every_convolution_and_the_classifier_follows(width, expected):
    torch.manual_seed(0)
    options = dict(num_classes=10, in_chans=1, config="A", hidden=64, pool_size=1)
    model = VGG(width=width, batch_norm=True, **options)
    assert [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)] == expected
    assert model.classifier[0].in_features == expected[-1]
    assert n_params(model.classifier[0]) == (expected[-1] + 1) * 64
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with torch.device("meta"):
        assert n_params(VGG(width=1.0, **options)) == n_params(VGG(**options))


def test_large_kernel_vgg_keeps_the_map_sizes():
    options = dict(num_classes=10, in_chans=1, config="B", batch_norm=True, width=0.25)
    small, large = VGG(**options), VGG(large_kernels=True, **options)
    x = torch.randn(4, 1, 32, 32)
    assert conv_output_sizes(large, x)[:5] == [32, 16, 8, 4, 2]  # padding k keeps each size
    with torch.no_grad():
        assert large.features(x).shape == small.features(x).shape == (4, 128, 1, 1)


def test_vgg_rejects_a_non_positive_width():
    with pytest.raises(ValueError, match="width"):
        VGG(width=0.0)


def test_vgg_rejects_an_unknown_configuration():
    with pytest.raises(ValueError, match="table 1"):
        VGG(config="C")


# ------------------------------------------------------------------------------------------ YAMLs


@pytest.mark.parametrize(
    "name,overrides,expected",
    [
        ("lenet5", [], 60_000),
        ("lenet5_modern", [], 61_706),
        ("alexnet", ["data.num_classes=1000", "data.channels=3"], 62_378_344),
        ("alexnet_torchvision", ["data.num_classes=1000", "data.channels=3"], 61_100_840),
        ("vgg11", ["data.num_classes=1000", "data.channels=3"], 132_863_336),
        ("vgg13", ["data.num_classes=1000", "data.channels=3"], 133_047_848),
        ("vgg16", ["data.num_classes=1000", "data.channels=3"], 138_357_544),
        ("vgg19", ["data.num_classes=1000", "data.channels=3"], 143_667_240),
        ("vgg11_bn", ["data.num_classes=1000", "data.channels=3"], 132_868_840),
        ("vgg16_bn", ["data.num_classes=1000", "data.channels=3"], 138_365_992),
        ("vgg16_fcn", ["data.num_classes=1000", "data.channels=3"], 138_357_544),
    ],
)
def test_model_config_builds_the_named_variant(compose_cfg, name, overrides, expected):
    cfg = validate(compose_cfg([f"model={name}", *overrides]))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert n_params(model) == expected
