"""SUB / BOOT return the very models they scored: the same weights and the same re-estimated
BatchNorm statistics, whatever a model's place among the draws."""

import pytest
import torch
from torch import nn

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.downstream.generation import ModelGenerator, SamplingAnchors
from hyperrep_hf.layout import WeightLayout
from hyperrep_hf.zoo import load_task
from hyperrep_hf.zoo.architectures import ARCHITECTURES
from hyperrep_hf.zoo.population import evaluate_accuracy


def bn_digits() -> nn.Module:
    """A digits CNN with BatchNorm (8x8 inputs, 10 classes)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))


@pytest.fixture
def generator(monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "bn-digits-test", bn_digits)
    torch.manual_seed(0)
    zoo = [bn_digits() for _ in range(6)]
    tok = WeightTokenizer(token_size=10)
    layout_id = tok.layout_of(zoo[0])
    layout = tok.layouts[layout_id].weights
    flat = torch.stack([layout.flatten(m.state_dict()) for m in zoo])
    tok.fit_standardization(flat)
    model = SaneModel(SaneConfig.from_preset("tiny", token_size=10, window_size=16)).eval()
    enc = tok.tokenize_flat(flat)
    with torch.no_grad():
        latents = model.encode(enc["tokens"], enc["positions"], enc["attention_mask"])
    info = {"architecture": "bn-digits-test", "architecture_kwargs": {}, "layout": WeightLayout.to_dict(layout),
            "task": "digits"}
    return ModelGenerator(model, tok, SamplingAnchors(latents, torch.linspace(0.1, 0.6, 6), info), load_task("digits"))


@pytest.mark.parametrize("method", ["sub", "boot"])
def test_sub_and_boot_return_the_models_they_scored(generator, method):
    samples = generator.generate(2, method, seed=4, num_draws=5)
    task = generator.task
    for item in samples:
        # the score is the validation accuracy of exactly the model returned
        assert evaluate_accuracy([item["model"]], task, "validation").item() == pytest.approx(item["score"])
    # a model's BatchNorm statistics do not depend on which other draws it was built with (up to float
    # rounding: decoding one latent or a batch takes different kernels on some CPUs, e.g. AVX2)
    alone = generator.build(generator.decode(samples[1]["latents"][None]), generator=torch.Generator().manual_seed(5))[0]
    for key in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(alone.state_dict()[key], samples[1]["model"].state_dict()[key], rtol=1e-5, atol=1e-6)
