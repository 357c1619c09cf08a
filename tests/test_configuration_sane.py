"""SaneConfig: presets, validation, save/load."""

import json

import pytest
from transformers import AutoConfig

import hyperrep_hf
from hyperrep_hf import SaneConfig


def test_presets_have_the_published_sizes():
    cnn = SaneConfig.from_preset("cnn")
    assert (cnn.d_model, cnn.num_layers, cnn.num_heads, cnn.window_size, cnn.latent_dim) == (1024, 8, 8, 64, 128)
    resnet = SaneConfig.from_preset("resnet18")
    assert (resnet.d_model, resnet.num_layers, resnet.num_heads, resnet.window_size) == (2048, 8, 16, 256)
    assert resnet.max_positions == (55000, 100, 550)
    tiny = SaneConfig.from_preset("tiny", token_size=201)
    assert tiny.token_size == 201 and tiny.d_model < 128


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match=r"'huge'.*\['cnn', 'resnet18', 'tiny'\]"):
        SaneConfig.from_preset("huge")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(d_model=30, num_heads=4), "divisible by num_heads"),
        (dict(d_model=33, num_heads=1), "even"),
        (dict(token_size=0), "token_size must be a positive integer"),
        (dict(max_positions=(10, 10)), "three table sizes"),
        (dict(max_positions=(10, -1, 5)), r"max_positions\[1\]"),
        (dict(dropout=1.0), "dropout"),
        (dict(gamma=-0.1), "gamma"),
        (dict(temperature=0), "temperature"),
    ],
)
def test_invalid_fields_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaneConfig(**kwargs)


def test_save_load_round_trip_through_autoconfig(tmp_path):
    config = SaneConfig.from_preset("tiny", token_size=201, temperature=0.3, gamma=0.2, layer_loss_norm=False)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "sane" and saved["max_positions"] == [1024, 32, 512]
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SaneConfig)
    assert loaded.to_json_string() == config.to_json_string()
    assert loaded.contrastive_temperature == 0.3 and loaded.layer_loss_norm is False
    assert hyperrep_hf.SaneConfig is SaneConfig
