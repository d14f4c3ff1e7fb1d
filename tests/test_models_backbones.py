"""MobileNet v1, EfficientNet through timm, and any timm/torchvision model by name."""

from __future__ import annotations

from fractions import Fraction

import pytest
import timm
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from cnnlab.config.schema import validate
from cnnlab.models.backbones import (
    BackboneError,
    replace_heads,
    timm_model,
    torchvision_model,
)
from cnnlab.models.mobilenet import SEPARABLE_LAYERS, STEM_CHANNELS, MobileNetV1
from cnnlab.tracking.profile import summarize


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes_at(module: nn.Module, model: nn.Module, x: torch.Tensor) -> tuple[torch.Size, ...]:
    """The shapes of what ``module`` (a part of ``model``) receives and returns when ``model``
    runs on x in eval mode."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0][0].shape, seen[0][1].shape


def input_shape_of(module: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Size:
    return shapes_at(module, model, x)[0]


# ---------------------------------------------------------------- MobileNet v1


# Table 6 of Howard et al. (2017): parameters of alpha MobileNet-224 (1000 classes), in millions.
@pytest.mark.parametrize(
    "alpha,exact,paper",
    [(1.0, 4_231_976, 4.2), (0.75, 2_585_560, 2.6), (0.5, 1_331_592, 1.3), (0.25, 470_072, 0.5)],
)
def test_mobilenet_parameter_counts_match_the_paper(alpha, exact, paper):
    n = n_params(MobileNetV1(num_classes=1000, in_chans=3, alpha=alpha))
    assert n == exact
    assert round(n / 1e6, 1) == paper


def test_mobilenet_matches_timm_mobilenetv1_100():
    """timm's mobilenetv1_100 is table 1 with ReLU6; with ReLU it must give our logits."""
    ours = MobileNetV1(num_classes=1000, in_chans=3).eval()
    ref = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    for m in ref.modules():
        if hasattr(m, "act") and isinstance(m.act, nn.ReLU6):
            m.act = nn.ReLU()
    ref_state = ref.state_dict()
    assert n_params(ours) == n_params(ref)
    assert [v.shape for v in ours.state_dict().values()] == [v.shape for v in ref_state.values()]
    ours.load_state_dict(dict(zip(ours.state_dict(), ref_state.values(), strict=True)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-4


def test_mobilenet_downsamples_32x_or_16x_with_small_input():
    x = torch.randn(2, 1, 64, 64)
    for small_input, last_map in ((False, 2), (True, 4)):
        model = MobileNetV1(num_classes=10, in_chans=1, small_input=small_input)
        assert input_shape_of(model.pool, model, x) == (2, 1024, last_map, last_map)
        assert model.min_input_size == 64 // last_map


@pytest.mark.parametrize("size", [28, 32, 57])
def test_mobilenet_small_input_trains_on_small_images(size):
    model = MobileNetV1(num_classes=10, in_chans=1, alpha=0.25, small_input=True)
    logits = model.train()(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert model.stem[0].weight.grad is not None


def test_mobilenet_rho_resizes_the_input_and_keeps_the_parameters():
    plain = MobileNetV1(num_classes=10, in_chans=3, alpha=0.25).eval()
    scaled = MobileNetV1(num_classes=10, in_chans=3, alpha=0.25, rho=0.5).eval()
    assert n_params(scaled) == n_params(plain)
    assert scaled.min_input_size == 64
    x = torch.randn(1, 3, 96, 96)
    assert input_shape_of(scaled.stem, scaled, x) == (1, 3, 48, 48)
    scaled.load_state_dict(plain.state_dict())
    shrunk = F.interpolate(x, size=(48, 48), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert torch.allclose(scaled(x), plain(shrunk), atol=1e-5)


def conv_mobilenet_parameters(num_classes: int, in_chans: int) -> int:
    """Table 4's Conv MobileNet in closed form: each 3x3 convolution has 9 * Cin * Cout weights
    (no bias) and its BatchNorm 2 * Cout; the classifier (Cin + 1) * classes."""
    total, channels = 9 * in_chans * STEM_CHANNELS + 2 * STEM_CHANNELS, STEM_CHANNELS
    for width, _ in SEPARABLE_LAYERS:
        total += 9 * channels * width + 2 * width
        channels = width
    return total + (channels + 1) * num_classes


def test_conv_mobilenet_has_table_4s_parameters_and_mult_adds():
    """Table 4: Conv MobileNet 29.3M parameters and 4866M mult-adds, MobileNet 4.2M and 569M."""
    with torch.device("meta"):
        conv = MobileNetV1(num_classes=1000, in_chans=3, separable=False)
        separable = MobileNetV1(num_classes=1000, in_chans=3)
    _, conv_params, conv_macs = summarize(conv, (3, 224, 224))
    _, separable_params, separable_macs = summarize(separable, (3, 224, 224))
    assert conv_params == conv_mobilenet_parameters(1000, 3) == 29_294_088
    assert round(conv_params / 1e6, 1) == 29.3
    assert round(separable_params / 1e6, 1) == 4.2
    # The paper rounds (and may or may not count the classifier's 1.024M): within 0.1%.
    assert conv_macs == pytest.approx(4866e6, rel=1e-3)
    assert separable_macs == pytest.approx(569e6, rel=1e-3)


@pytest.mark.parametrize("index", [1, 6, 12], ids=["64to128_s2", "512to512", "1024to1024"])
def test_a_separable_layer_costs_1_over_n_plus_1_over_9_of_its_standard_convolution(index):
    """Section 3.1: (9 * C * H * W + C * N * H * W) / (9 * C * N * H * W) = 1 / N + 1 / 9 for N
    output channels, with the strides and widths of table 1."""
    with torch.device("meta"):
        separable = MobileNetV1(num_classes=10, in_chans=3)
        conv = MobileNetV1(num_classes=10, in_chans=3, separable=False)
    in_channels = separable.layers[index].depthwise[0].in_channels
    n = separable.layers[index].pointwise[0].out_channels
    assert conv.layers[index][0].kernel_size == (3, 3)
    assert conv.layers[index][0].in_channels == in_channels
    assert conv.layers[index][0].out_channels == n
    shape = (in_channels, 28, 28)
    _, _, separable_macs = summarize(separable.layers[index], shape)
    _, _, conv_macs = summarize(conv.layers[index], shape)
    assert Fraction(separable_macs, conv_macs) == Fraction(1, n) + Fraction(1, 9)


def test_conv_mobilenet_keeps_shapes_and_trains():
    torch.manual_seed(0)
    conv = MobileNetV1(num_classes=10, in_chans=1, alpha=0.25, small_input=True, separable=False)
    separable = MobileNetV1(num_classes=10, in_chans=1, alpha=0.25, small_input=True)
    # The separable network's state dict keeps timm's names (test above); this one is plain.
    assert not any("depthwise" in k or "pointwise" in k for k in conv.state_dict())
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    assert input_shape_of(conv.pool, conv, x) == input_shape_of(separable.pool, separable, x)
    loss = F.cross_entropy(conv.train()(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())


def test_mobilenet_rejects_a_non_positive_multiplier():
    with pytest.raises(ValueError, match="alpha"):
        MobileNetV1(alpha=0.0)


@pytest.mark.parametrize("option,alpha", [("mobilenet_v1", 1.0), ("mobilenet_v1_050", 0.5)])
def test_mobilenet_configs(compose_cfg, option, alpha):
    cfg = validate(compose_cfg([f"model={option}", "data.num_classes=1000", "data.channels=3"]))
    model = instantiate(cfg.model)
    assert isinstance(model, MobileNetV1)
    assert n_params(model) == n_params(MobileNetV1(1000, 3, alpha=alpha))


# ---------------------------------------------------------------- EfficientNet through timm

# Exact timm counts (1000 classes); Tan and Le (2019), table 2, round them to 5.3M, 7.8M, 9.2M,
# 12M, 19M, 30M, 43M and 66M. B2 is the exception: timm and torchvision both have 9,109,994.
EFFICIENTNET_PARAMS = {
    "efficientnet_b0": (5_288_548, "5.3"),
    "efficientnet_b1": (7_794_184, "7.8"),
    "efficientnet_b2": (9_109_994, "9.1"),
    "efficientnet_b3": (12_233_232, "12"),
    "efficientnet_b4": (19_341_616, "19"),
    "efficientnet_b5": (30_389_784, "30"),
    "efficientnet_b6": (43_040_704, "43"),
    "efficientnet_b7": (66_347_960, "66"),
}


@pytest.mark.parametrize("option", sorted(EFFICIENTNET_PARAMS))
def test_efficientnet_configs_have_the_paper_parameter_counts(compose_cfg, option):
    cfg = validate(compose_cfg([f"model={option}", "data.num_classes=1000", "data.channels=3"]))
    assert cfg.model.name == option
    # On the meta device no memory is allocated: the count of B7 costs nothing.
    with torch.device("meta"):
        n = n_params(instantiate(cfg.model))
    exact, paper = EFFICIENTNET_PARAMS[option]
    assert n == exact
    assert f"{n / 1e6:.2g}" == paper


@pytest.mark.parametrize("option", ["efficientnet_b0", "efficientnet_b7"])
def test_efficientnet_builds_and_classifies_grey_images(compose_cfg, option):
    cfg = validate(compose_cfg([f"model={option}"]))
    model = instantiate(cfg.model)
    assert model.conv_stem.in_channels == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


# ---------------------------------------------------------------- any model by name


@pytest.mark.parametrize("option", ["timm", "torchvision"])
def test_backbone_configs_build_the_named_model(compose_cfg, option):
    cfg = validate(compose_cfg([f"model={option}", "model.name=resnet18", "model.input_size=64"]))
    model = instantiate(cfg.model)
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1
    assert input_shape_of(model.conv1, model, torch.randn(2, 1, 28, 28)) == (2, 1, 64, 64)


@pytest.mark.parametrize("factory", [timm_model, torchvision_model])
def test_unknown_names_raise_with_close_matches(factory):
    with pytest.raises(ValueError, match=r"'resnet181'.*Close matches: resnet18\b"):
        factory("resnet181", num_classes=10, in_chans=1)


def test_torchvision_grey_conv_sums_the_rgb_filters():
    """A grey image through the adapted model equals that image repeated to RGB through the
    original one: the summed first convolution is the only difference."""
    torch.manual_seed(0)
    rgb = torchvision_model("resnet18", num_classes=10, in_chans=3).eval()
    torch.manual_seed(0)
    grey = torchvision_model("resnet18", num_classes=10, in_chans=1).eval()
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(grey.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        assert (grey(x) - rgb(x.repeat(1, 3, 1, 1))).abs().max() < 1e-4


def test_replace_heads_changes_the_classifier_and_auxiliary_heads_only():
    model = nn.ModuleDict(
        {
            "hidden": nn.Linear(8, 16),
            "aux": nn.Linear(16, 1000),
            "fc": nn.Linear(16, 1000, bias=False),
        }
    )
    replace_heads(model, 7)
    assert model["hidden"].out_features == 16
    assert model["aux"].out_features == 7 and model["aux"].bias is not None
    assert model["fc"].out_features == 7 and model["fc"].bias is None


def test_torchvision_squeezenet_classifies_with_its_last_convolution():
    model = torchvision_model("squeezenet1_1", num_classes=5, in_chans=3).eval()
    assert model.classifier[1].out_channels == 5
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize(
    "factory,name,features,last_map",
    [
        (torchvision_model, "resnet18", "layer4", (1, 4)),
        (timm_model, "resnet18", "layer4", (1, 4)),
        (timm_model, "efficientnet_b0", "conv_head", (1, 2)),
    ],
)
def test_small_input_stem_downsamples_less(factory, name, features, last_map):
    x = torch.randn(2, 1, 32, 32)
    for small_input, size in zip((False, True), last_map, strict=True):
        model = factory(name, num_classes=10, in_chans=1, small_input=small_input)
        _, features_shape = shapes_at(model.get_submodule(features), model, x)
        assert features_shape[-2:] == (size, size)
        with torch.no_grad():
            assert model(x).shape == (2, 10)


def test_small_input_names_the_supported_families():
    with pytest.raises(ValueError, match=r"squeezenet1_1.*torchvision.models.resnet.ResNet"):
        torchvision_model("squeezenet1_1", num_classes=10, in_chans=1, small_input=True)


def test_input_size_resizes_inside_and_keeps_state_dict_keys():
    plain = timm_model("resnet18", num_classes=10, in_chans=3)
    resized = timm_model("resnet18", num_classes=10, in_chans=3, input_size=48)
    assert list(resized.state_dict()) == list(plain.state_dict())
    assert resized.min_input_size == 1
    x = torch.randn(1, 3, 20, 20)
    assert input_shape_of(resized.conv1, resized, x) == (1, 3, 48, 48)
    resized.load_state_dict(plain.state_dict())
    with torch.no_grad():
        expected = plain.eval()(F.interpolate(x, size=(48, 48), mode="bilinear"))
        assert torch.allclose(resized(x), expected, atol=1e-5)


def test_min_input_size_defaults_to_32_and_follows_fixed_size_models():
    assert timm_model("resnet18", 10, 3).min_input_size == 32
    assert torchvision_model("resnet18", 10, 3).min_input_size == 32
    vit = timm_model("vit_tiny_patch16_224", 10, 1)
    assert vit.min_input_size == 224
    with torch.no_grad():
        assert vit.eval()(torch.randn(1, 1, 224, 224)).shape == (1, 10)


def test_backbone_errors_are_clean_cli_errors():
    from cnnlab.errors import CnnlabError

    assert issubclass(BackboneError, CnnlabError) and issubclass(BackboneError, ValueError)


def test_timm_models_take_dropout_and_drop_path_rates():
    model = instantiate(
        {
            "_target_": "cnnlab.models.backbones.timm_model",
            "name": "efficientnet_b0",
            "num_classes": 10,
            "in_chans": 1,
            "drop_rate": 0.2,
            "drop_path_rate": 0.2,
        }
    )
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert len(rates) == 15 and max(rates) == pytest.approx(0.2 * 15 / 16)
    assert model.drop_rate == 0.2
    # SiLU throughout, as the paper's EfficientNet (Swish-1).
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
