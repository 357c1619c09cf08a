"""A model whose state_dict names differ from the zoo's but whose tensors match (the published CNN-s
without Dropout modules: keys module_list.0/3/6/9/11 or 0/3/6/9/11, maybe saved sorted) embeds,
predicts and serves as a prompt like the zoo's own; one whose shapes differ is refused with the first
differing tensor named."""

import pytest
import torch
from transformers import pipeline

from hyperrep_hf import SaneConfig, SaneModel, WeightLayout, WeightTokenizer
from hyperrep_hf.downstream.embedding import encode
from hyperrep_hf.downstream.generation import SamplingAnchors
from hyperrep_hf.downstream.probes import ProbeSet
from hyperrep_hf.zoo.architectures import build_model

PUBLISHED = ("0", "3", "6", "9", "11")  # the Model Zoos' CNN-s module indices with dropout 0


def published_names(state_dict, prefix="module_list."):
    """The same tensors under the Model Zoos' CNN-s names (dropout 0: no Dropout modules)."""
    modules = list(dict.fromkeys(k.split(".")[0] for k in state_dict))
    index = dict(zip(modules, PUBLISHED, strict=True))
    return {prefix + index[k.split(".")[0]] + "." + k.split(".")[1]: v for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A CNN-s checkpoint: tokenizer fitted on 6 random CNN-s, a random tiny SANE, probes of a made-up
    property and sampling anchors."""
    folder = tmp_path_factory.mktemp("cnn-s-ckpt")
    torch.manual_seed(0)
    models = [build_model("cnn-s") for _ in range(6)]
    tokenizer = WeightTokenizer().fit_standardization(models)
    sane = SaneModel(SaneConfig.from_preset("tiny", token_size=tokenizer.token_size, window_size=64)).eval()
    sane.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    enc = tokenizer(models)
    with torch.no_grad():
        x = sane.embed(enc["tokens"], enc["positions"], enc["attention_mask"])
        latents = encode(sane, enc)
    values = torch.linspace(0, 1, 6).tolist()
    ProbeSet.fit("sane", x[:4], {"test_acc": values[:4]}, x[4:], {"test_acc": values[4:]},
                 info={"pooling": "mean", "permutations": 0}).save(folder)
    layout = WeightLayout.from_state_dict(models[0].state_dict())
    SamplingAnchors(latents, torch.tensor(values), {"architecture": "cnn-s", "architecture_kwargs": {},
                                                    "layout": layout.to_dict(), "task": None}).save(folder)
    return folder


def test_published_names_embed_predict_and_prompt_like_the_zoos_own(checkpoint):
    torch.manual_seed(1)
    model = build_model("cnn-s").eval()
    ours = model.state_dict()
    assert list(ours)[:4] == ["0.weight", "0.bias", "4.weight", "4.bias"]  # this library's CNN-s has Dropout modules
    named = published_names(ours)
    sorted_plain = dict(sorted(published_names(ours, prefix="").items()))  # as a .safetensors file keeps them
    assert list(sorted_plain)[:4] == ["0.bias", "0.weight", "11.bias", "11.weight"]

    embed = pipeline("weight-embedding", model=str(checkpoint), device="cpu")
    reference = embed(model)
    for variant in (named, sorted_plain):
        assert torch.equal(embed(variant), reference)
    predict = pipeline("weight-property-prediction", model=str(checkpoint), device="cpu")
    assert predict(named) == predict(model)
    generate = pipeline("weight-generation", model=str(checkpoint), device="cpu")
    around_named = generate([named], num_samples=2, method="neighbours", seed=0)
    around_model = generate([model], num_samples=2, method="neighbours", seed=0)
    for a, b in zip(around_named, around_model):
        assert torch.equal(a["latents"], b["latents"])
        assert set(a["state_dict"]) == set(ours)  # samples come back in the zoo's layout


def test_a_model_of_other_shapes_is_refused_naming_the_first_differing_tensor(checkpoint):
    embed = pipeline("weight-embedding", model=str(checkpoint), device="cpu")
    rgb = published_names(build_model("cnn-s", in_channels=3).state_dict())
    with pytest.raises(ValueError, match=r"tensor 0 of the model, 'module_list.0.weight' of shape \[8, 3, 5, 5\], "
                                         r"differs from the layout, which expects '0.weight' of shape \[8, 1, 5, 5\]"):
        embed(rgb)
    ours = build_model("cnn-s").state_dict()
    truncated = dict(list(published_names(ours).items())[:-1])
    with pytest.raises(ValueError, match=f"the model has 9 floating-point tensors, the layout 10.*expects '{list(ours)[-1]}' too"):
        embed(truncated)
    generate = pipeline("weight-generation", model=str(checkpoint), device="cpu")
    with pytest.raises(ValueError, match="tensor 0 of the model, 'module_list.0.weight'"):
        generate([rgb], num_samples=1, method="neighbours")
