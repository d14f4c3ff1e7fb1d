"""What dropout and BatchNorm do in train and eval mode, asserted exactly on models built from
cnnlab's configs: the facts behind the dropout and batch-norm ablations.

- Inverted dropout (Srivastava et al. 2014, as every framework implements it): in training each
  unit is zeroed with probability p and the kept ones are scaled by 1 / (1 - p), so that the
  expected output is the input and nothing needs rescaling at test time, when dropout is the
  identity.
- BatchNorm (Ioffe and Szegedy 2015, algorithm 1): in training a layer normalises with the
  batch's mean and biased variance and updates its running statistics by
  ``running = (1 - momentum) * running + momentum * batch`` with the unbiased variance; in
  evaluation it normalises with the running statistics and leaves them alone.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from cnnlab.config.schema import validate

MODELS = {  # config overrides: a small model whose classifier has dropout
    "resnet_small": ["model=resnet_small", "data.image_size=28"],
    "vgg11_bn": ["model=vgg11_bn", "data.image_size=32", "model.hidden=64", "model.pool_size=1"],
}


def build(compose_cfg, name: str, *overrides: str) -> tuple[nn.Module, int]:
    """The model of ``name`` with ``overrides``, and its input size."""
    torch.manual_seed(0)
    cfg = validate(compose_cfg([*MODELS[name], *overrides]))
    return instantiate(cfg.model), cfg.data.image_size


def run_capturing(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple:
    """(input, output) of ``layer`` on ``model(x)``, copied before in-place layers change them."""
    seen = []
    handle = layer.register_forward_hook(
        lambda m, args, out: seen.append((args[0].clone(), out.clone()))
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_dropout_scales_kept_units_by_1_over_1_minus_p_and_is_the_identity_in_eval(
    compose_cfg, name, p
):
    model, size = build(compose_cfg, name, f"model.dropout={p}")
    dropout = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    assert dropout.p == p
    x = torch.randn(64, 1, size, size)

    inputs, outputs = run_capturing(model.train(), dropout, x)
    kept = outputs != 0
    # PyTorch multiplies by the float32 of 1 / (1 - p): x / (1 - p) itself where that scale is
    # exact (p = 0.5), else within one rounding of it.
    assert torch.equal(outputs[kept], inputs[kept] * (1 / (1 - p)))
    if p == 0.5:
        assert torch.equal(outputs[kept], inputs[kept] / (1 - p))
    one_rounding = torch.finfo(torch.float32).eps
    torch.testing.assert_close(outputs[kept], inputs[kept] / (1 - p), rtol=one_rounding, atol=0)
    nonzero = inputs != 0
    dropped = (nonzero & ~kept).sum() / nonzero.sum()
    assert abs(dropped.item() - p) < 0.05, dropped
    # E[output] = x: the mean over many masks of the same input tends to the input.
    torch.manual_seed(1)
    mean = torch.stack([dropout(inputs) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, inputs, atol=0.1 * inputs.abs().max().item(), rtol=0)

    inputs, outputs = run_capturing(model.eval(), dropout, x)
    assert torch.equal(outputs, inputs)


@pytest.mark.parametrize("name", MODELS)
def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_eval(compose_cfg, name):
    model, size = build(compose_cfg, name)
    # The last one: its small map (N = 8 x 4 x 4 values per channel for resnet_small) makes the
    # unbiased variance differ clearly from the biased one, by a factor N / (N - 1).
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, 1, size, size) * 3 + 1
    weight, bias = bn.weight.detach()[:, None, None], bn.bias.detach()[:, None, None]

    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    inputs, outputs = run_capturing(model.train(), bn, x)
    mean = inputs.mean((0, 2, 3))
    biased = inputs.var((0, 2, 3), correction=0)
    unbiased = inputs.var((0, 2, 3), correction=1)
    expected = (inputs - mean[:, None, None]) / torch.sqrt(biased[:, None, None] + bn.eps)
    torch.testing.assert_close(outputs, expected * weight + bias, rtol=1e-5, atol=1e-5)
    m = bn.momentum
    tight = dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_mean, (1 - m) * running_mean + m * mean, **tight)
    torch.testing.assert_close(bn.running_var, (1 - m) * running_var + m * unbiased, **tight)
    assert not torch.allclose(bn.running_var, (1 - m) * running_var + m * biased, **tight)

    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    inputs, outputs = run_capturing(model.eval(), bn, x)
    expected = (inputs - running_mean[:, None, None]) / torch.sqrt(
        running_var[:, None, None] + bn.eps
    )
    torch.testing.assert_close(outputs, expected * weight + bias, rtol=1e-5, atol=1e-5)
    assert torch.equal(bn.running_mean, running_mean)
    assert torch.equal(bn.running_var, running_var)
