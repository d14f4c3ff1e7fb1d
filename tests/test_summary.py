"""cnnlab-summary: parameters and MACs counted by FlopCounterMode, checked against the source
texts' cost arithmetic and published figures."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from cnnlab.cli.summary import build, main
from cnnlab.tracking.profile import summarize

# (config, input C,H,W, total params, total MACs, {layer: (params, MACs)}, final output shape)
COST_EXAMPLES = [
    # 002: 28*28*32*5*5*192 = 120 Mil; 000: 5x5x192x32 = 153,600 parameters.
    (
        "cost_inception_5x5_naive",
        [192, 28, 28],
        153_600,
        120_422_400,
        {"branch.conv5x5": (153_600, 120_422_400)},
        "[1, 32, 28, 28]",
    ),
    # 000: 1x1x192x16 + 5x5x16x32 = 15,872; 002: 28*28*16*192 = 2.5 Mil, 28*28*32*5*5*16 = 10 Mil.
    (
        "cost_inception_5x5_bottleneck",
        [192, 28, 28],
        15_872,
        12_443_648,
        {"branch.reduce": (3_072, 2_408_448), "branch.conv5x5": (12_800, 10_035_200)},
        "[1, 32, 28, 28]",
    ),
    # 000: a dense layer would have added (7 x 7 x 1,024) x 1,024 = 51,380,224 parameters.
    (
        "cost_head_dense",
        [1024, 7, 7],
        51_380_224,
        51_380_224,
        {"fc": (51_380_224, 51_380_224)},
        "[1, 1024]",
    ),
    ("cost_head_gap", [1024, 7, 7], 0, 0, {"pool": (0, 0)}, "[1, 1024]"),
    # 002: 6x6x3 input, five 3x3 filters, 4x4x5 output: 2160 multiplications.
    ("cost_conv3x3_standard", [3, 6, 6], 135, 2_160, {"conv": (135, 2_160)}, "[1, 5, 4, 4]"),
    # 002: depthwise separable: 432 + 240 = 672.
    (
        "cost_conv3x3_depthwise_separable",
        [3, 6, 6],
        42,
        672,
        {"conv.depthwise": (27, 432), "conv.pointwise": (15, 240)},
        "[1, 5, 4, 4]",
    ),
]


@functools.cache
def summarize_config(config: str, shape: tuple[int, ...]):
    name, model, input_shape = build([f"model={config}", f"input_shape={list(shape)}"])
    assert name == config and input_shape == shape
    return summarize(model, input_shape)


@pytest.mark.parametrize(
    "config,shape,params,macs,layers,output", COST_EXAMPLES, ids=[c[0] for c in COST_EXAMPLES]
)
def test_cost_examples_match_the_source_texts(config, shape, params, macs, layers, output):
    rows, total_params, total_macs = summarize_config(config, tuple(shape))
    assert (total_params, total_macs) == (params, macs)
    by_name = {row.name: row for row in rows}
    for layer, expected in layers.items():
        assert (by_name[layer].params, by_name[layer].macs) == expected
    assert rows[-1].output_shape == output


def test_bottleneck_and_depthwise_savings():
    """The ratios the texts draw from the numbers: ~10x fewer multiplications and weights with
    the 1x1 bottleneck; depthwise separable costs 0.31 of a standard convolution."""
    cost = {c[0]: summarize_config(c[0], tuple(c[1]))[1:] for c in COST_EXAMPLES}
    naive, bottleneck = cost["cost_inception_5x5_naive"], cost["cost_inception_5x5_bottleneck"]
    assert 9.5 < naive[0] / bottleneck[0] < 10 and 9.5 < naive[1] / bottleneck[1] < 10
    standard = cost["cost_conv3x3_standard"][1]
    separable = cost["cost_conv3x3_depthwise_separable"][1]
    assert round(separable / standard, 2) == 0.31
    # The general ratio 1/n_c' + 1/f^2 with 5 filters of size 3.
    assert separable / standard == pytest.approx(1 / 5 + 1 / 9)
    dense, gap = cost["cost_head_dense"][0], cost["cost_head_gap"][0]
    assert dense - gap == 7 * 7 * 1024 * 1024


class Toy(nn.Module):
    """Layers in a ModuleList iterated without calling it, a module called twice, an unused
    head and a parameter and a matrix product of the root's own."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4, bias=False) for _ in range(2)])
        self.act = nn.ReLU()
        self.aux = nn.Linear(4, 2)
        self.proj = nn.Parameter(torch.ones(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = self.act(block(x))
        return x @ self.proj


def test_summarize_attributes_own_parameters_and_macs():
    model = Toy().train()
    rows, total_params, total_macs = summarize(model, (1, 2, 2))
    by_name = {row.name: row for row in rows}
    assert set(by_name) == {"Toy", "blocks.0", "blocks.1", "act", "aux"}
    assert (by_name["blocks.0"].params, by_name["blocks.0"].macs) == (16, 16)
    assert (by_name["Toy"].params, by_name["Toy"].macs) == (12, 12)
    assert by_name["act"].output_shape == "[1, 4] (x2 calls)"
    assert (by_name["aux"].output_shape, by_name["aux"].params) == ("(not run)", 10)
    assert total_params == 16 + 16 + 10 + 12 == sum(r.params for r in rows)
    assert total_macs == 16 + 16 + 12 == sum(r.macs for r in rows)
    assert model.training, "summarize must leave the model's mode as it found it"


def test_torchvision_resnet18_matches_published_figures():
    """torchvision's model table: ResNet-18 has 11,689,512 parameters and 1.81 GFLOPS (which
    torchvision counts as multiply-accumulates) at 224x224."""
    model = torchvision.models.resnet18(weights=None)
    _, params, macs = summarize(model, (3, 224, 224))
    assert params == 11_689_512
    assert round(macs / 1e9, 2) == 1.81


def test_input_shape_and_num_classes_set_the_data_config():
    name, model, shape = build(["model=resnet20", "input_shape=[3,32,32]", "num_classes=10"])
    rows, params, macs = summarize(model, shape)
    # He et al. (2016), table 6: ResNet-20 has 0.27M parameters; ~41M FLOPs is the usual figure.
    assert round(params / 1e6, 2) == 0.27
    assert round(macs / 1e6) == 41
    assert rows[0].output_shape == "[1, 16, 32, 32]"
    _, model, shape = build(["model=resnet20", "input_shape=[3,16,16]", "num_classes=7"])
    assert shape == (3, 16, 16)
    assert summarize(model, shape)[0][-1].output_shape == "[1, 7]"
    # Without input_shape the data config's size is used: Fashion-MNIST's 1x28x28.
    assert build(["model=resnet_small"])[2] == (1, 28, 28)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["model=no_such_model"], "Could not find 'model/no_such_model'"),
        (["model=resnet20", "input_shape=[3,224]"], "expected 3 positive integers"),
        (["model=resnet20", "num_classes=many"], "expected a positive integer"),
        (["model=resnet20", "model.widths=abc"], "Bad config value model.widths"),
        (["model=cost_head_dense", "input_shape=[1024,7,7]", "model.size=8"], "cannot take"),
    ],
)
def test_bad_overrides_exit_2_with_one_line(capsys, args, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab-summary: error:") and err.count("\n") == 1, err
    assert fragment in err


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning: 10-20 s on two cores
def test_cli_prints_parseable_totals(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.summary", "model=cost_conv3x3_depthwise_separable"]
        + ["input_shape=[3,6,6]"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "conv.pointwise" in proc.stdout
    assert re.search(r"^Total params: (\d+)", proc.stdout, re.M).group(1) == "42"
    assert re.search(r"^Total MACs: (\d+)", proc.stdout, re.M).group(1) == "672"
    assert list(tmp_path.iterdir()) == [], "a summary must not write anything"
