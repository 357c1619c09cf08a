"""The Model Zoos networks as published: init spreads, dropout placement, state_dict keys, sizes."""

import math

import pytest
import torch
from torch import nn

from hyperrep_hf.zoo import build_model
from hyperrep_hf.zoo.architectures import init_weights, num_parameters


def test_kaiming_uniform_is_torchs_kaiming_uniform_with_a_0():
    """U(-b, b) with b = sqrt(6 / fan_in), as the Model Zoos; torch's layer default is 2.45x narrower."""
    model = nn.Sequential(nn.Conv2d(8, 64, 5), nn.Linear(400, 300))
    init_weights(model, "kaiming_uniform", generator=torch.Generator().manual_seed(0))
    for layer, fan_in in ((model[0], 8 * 25), (model[1], 400)):
        bound = math.sqrt(6 / fan_in)
        w = layer.weight
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.99 * bound  # the whole interval is used, not 1 / sqrt(fan_in)
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
        assert torch.equal(layer.bias, torch.full_like(layer.bias, 0.01))
    default = init_weights(nn.Linear(400, 300), "default")  # torch's own init, kept under "default"
    assert default.weight.abs().max() <= 1 / math.sqrt(400)


@pytest.mark.parametrize("name, keys, params, dropouts", [
    ("cnn-s", ["0", "4", "8", "11", "14"], 2464, [3, 7, 13]),
    ("cnn-l", ["0", "4", "8", "13", "16"], 10853, [3, 7, 11, 15]),
])
def test_dropout_follows_the_model_zoos_networks(name, keys, params, dropouts):
    model = build_model(name, dropout=0.5)
    assert [k.split(".")[0] for k in model.state_dict()][::2] == keys
    assert num_parameters(model) == params
    assert [i for i, m in enumerate(model) if isinstance(m, nn.Dropout)] == dropouts
    # the last dropout sits between the first linear layer (with its activation) and the classifier
    assert isinstance(model[dropouts[-1] - 2], nn.Linear) and isinstance(model[dropouts[-1] + 1], nn.Linear)
    assert all(model[i].p == 0.5 for i in dropouts)
    assert list(build_model(name).state_dict()) == list(model.state_dict())  # keys do not depend on the rate
