"""Models of an architecture in no training zoo (per-model / per-token normalisation, the pipelines'
opt-in, position tables), transfer of generated models, and the refusals (downstream.transfer)."""

import pytest
import torch
from torch import nn
from transformers import pipeline

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.downstream import transfer
from hyperrep_hf.downstream.embedding import encode_flat
from hyperrep_hf.downstream.generation import SamplingAnchors
from hyperrep_hf.zoo import build_model
from hyperrep_hf.zoo.tasks import TaskData


def _bn_net():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def _mlp(seed):
    torch.manual_seed(seed)
    return build_model("mlp", in_features=64, hidden=(16,), num_classes=10)


def _flat_of(tok, layout_id, module):
    return tok.layouts[layout_id].weights.flatten(module.state_dict()).unsqueeze(0)


@pytest.mark.parametrize("mode", ["model", "token"])
def test_self_normalisation_round_trips_and_standardises(mode, tmp_path):
    torch.manual_seed(0)
    for net in (_mlp(0), _bn_net()):
        tok = WeightTokenizer(token_size=33, normalization=mode)
        enc = tok(net)
        assert enc["standardized"].all() and enc["token_stats"].shape == (1, enc["tokens"].shape[1], 2)
        for name, value in tok.decode(enc)[0].items():
            if value.is_floating_point():
                torch.testing.assert_close(value, net.state_dict()[name], rtol=1e-5, atol=1e-6)
        flat = _flat_of(tok, 0, net)
        enc_flat = tok.tokenize_flat(flat)
        torch.testing.assert_close(enc_flat["tokens"], enc["tokens"])
        torch.testing.assert_close(tok.decode_flat(enc_flat), flat, rtol=1e-5, atol=1e-6)
        values = enc["tokens"][enc["value_mask"]]
        assert values.abs().max() < 4.0 * 2.1  # standardised, then the soft clip (c = 4) bounds them
        if mode == "model":  # every layer of every model: mean 0, std 1 (before the clip)
            first = tok.layouts[0].blocks[0]
            layer = enc["tokens"][0, first.n0:first.n1][enc["value_mask"][0, first.n0:first.n1]]
            assert abs(float(layer.mean())) < 0.02 and abs(float(layer.std(correction=0)) - 1) < 0.05
        # the mode travels with the saved tokenizer
        tok.save_pretrained(tmp_path / mode)
        again = WeightTokenizer.from_pretrained(tmp_path / mode)
        assert again.layouts[0].normalization == mode
        torch.testing.assert_close(again.decode_flat(enc_flat), flat, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pass token_stats="):
        tok.decode_flat(enc_flat["tokens"])  # bare tokens (e.g. a decoder's output) need the statistics
    with pytest.raises(ValueError, match="normalization must be one of"):
        WeightTokenizer(normalization="batch")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SANE checkpoint trained briefly (reconstruction) on a 'zoo A' of digits CNNs, with its
    tokenizer fitted on them; the MLP is in no training zoo."""
    torch.manual_seed(0)
    cnns = [build_model("cnn-digits") for _ in range(8)]
    tok = WeightTokenizer()
    tok.layout_of(cnns[0])
    flat = torch.cat([_flat_of(tok, 0, m) for m in cnns])
    tok.fit_standardization(flat)
    enc = tok.tokenize_flat(flat)
    model = SaneModel(SaneConfig.from_preset("tiny", token_size=tok.token_size, d_model=32, latent_dim=8,
                                             window_size=64, max_positions=(64, 8, 24)))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is many times faster on a shared 2-core machine
    try:
        for _ in range(40):
            out = model(enc["tokens"], enc["positions"], targets=enc["tokens"], value_mask=enc["value_mask"])
            opt.zero_grad()
            out.reconstruction_loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    folder = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok, flat


def test_checkpoint_of_zoo_a_embeds_and_decodes_an_unseen_architecture(trained):
    folder, model, tok, _ = trained
    mlps = [_mlp(s) for s in range(3)]
    embedder = pipeline("weight-embedding", model=str(folder))
    with pytest.raises(ValueError, match="allow_unseen=True"):
        embedder(mlps[0])  # the old safety stays the default
    out = embedder(mlps, allow_unseen=True)
    assert len(out) == 3 and all(e.shape == (model.config.latent_dim,) and torch.isfinite(e).all() for e in out)
    tok_b = embedder.feature_extractor
    layout_id = len(tok_b.layouts) - 1
    assert tok_b.layouts[layout_id].normalization == transfer.UNSEEN_NORMALIZATION
    flat = torch.cat([_flat_of(tok_b, layout_id, m) for m in mlps])
    direct = encode_flat(embedder.model, tok_b, flat, layout_id=layout_id).mean(1)
    torch.testing.assert_close(torch.stack(out), direct, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[0], out[1])  # different models, different embeddings
    # decoding: the reconstruction comes back in the model's own weight scale and loads into it
    recon = transfer.reconstruct(model, tok_b, flat, layout_id)
    rms = lambda w: w.square().mean().sqrt()  # noqa: E731
    assert 0.2 < float(rms(recon) / rms(flat)) < 5.0 and torch.isfinite(recon).all()
    state = tok_b.layouts[layout_id].weights.unflatten(recon[0])
    _mlp(9).load_state_dict(state)
    errors = transfer.layer_errors(tok_b, layout_id, flat, recon)
    assert errors.shape == (tok_b.layouts[layout_id].num_layers,) and torch.isfinite(errors).all()
    # the training architecture keeps its zoo statistics
    assert tok_b.layouts[0].normalization == "layer" and tok_b.layouts[0].standardized


def test_choose_normalization_compares_modes_on_the_given_models(trained):
    _, model, tok, _ = trained
    choice = transfer.choose_normalization(model, tok, [_mlp(s) for s in range(3)])
    assert set(choice["validation_error"]) == {"model", "token"}
    assert choice["normalization"] == min(choice["validation_error"], key=choice["validation_error"].get)
    assert len(tok.layouts) == 1  # the checkpoint's tokenizer is not changed
    with pytest.raises(ValueError, match="zoo statistics"):
        transfer.choose_normalization(model, tok, [build_model("cnn-digits"), build_model("cnn-digits")])


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


def test_refusals_name_the_fix(trained):
    folder, model, tok, _ = trained
    embedder = pipeline("weight-embedding", model=str(folder), allow_unseen=True)
    with pytest.raises(ValueError, match="cannot encode this model's layers.*register_layer_handler"):
        embedder(_Scaled())
    with pytest.raises(ValueError, match="pass the model .nn.Module. or its state_dict"):
        embedder(torch.randn(123))
    wide = build_model("mlp", in_features=64, hidden=(40,), num_classes=10)  # 40 channels > the table's 24
    with pytest.raises(ValueError, match=r"position tables .* \(64, 8, 24\).*positions='clamp'"):
        embedder(wide)
    clamped = embedder(wide, positions="clamp")
    assert clamped.shape == (model.config.latent_dim,) and torch.isfinite(clamped).all()
    pos = torch.tensor([[[70, 1, 30], [3, 9, 2]]])
    assert transfer.clamp_positions(pos, (64, 8, 24)).tolist() == [[[63, 1, 23], [3, 7, 2]]]
    with pytest.raises(ValueError, match="positions must be one of"):
        embedder(wide, positions="wrap")
    with pytest.raises(ValueError, match="no zoo statistics"):
        transfer.register_unseen(tok, _mlp(0), normalization="layer")
    big = TaskData("big", *(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)) * 3, 10)
    with pytest.raises(ValueError, match="same input shape"):
        transfer.check_task_fits(build_model("cnn-digits"), big)
    small = TaskData("five", *(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)) * 3, 5)
    with pytest.raises(ValueError, match="as many classes"):
        transfer.check_task_fits(build_model("cnn-digits"), small)


def _anchors(model, tok, flat):
    latents = encode_flat(model, tok, flat)
    info = {"architecture": "cnn-digits", "architecture_kwargs": {}, "layout": tok.layouts[0].weights.to_dict(),
            "task": "digits", "bandwidth_scale": 0.25}
    return SamplingAnchors(latents, torch.linspace(0.1, 0.9, len(flat)).double(), info)


def test_generation_samples_an_unseen_architecture_around_a_prompt(trained):
    folder, model, tok, flat = trained
    gen = pipeline("weight-generation", model=str(folder), anchors=_anchors(model, tok, flat))
    prompt = _mlp(3)
    with pytest.raises(ValueError, match="'1.weight' of shape .16, 64.*not cnn-digits models like the anchors; pass allow_unseen=True"):
        gen(prompt, num_samples=2, method="neighbours")
    samples = gen([prompt], num_samples=3, method="neighbours", seed=1, allow_unseen=True, spread=0.1)
    assert len(samples) == 3
    x = torch.randn(5, 1, 8, 8)
    for s in samples:
        assert type(s["model"]) is type(prompt) and s["model"](x).shape == (5, 10)
        assert not torch.equal(s["state_dict"]["1.weight"], prompt.state_dict()["1.weight"])
    again = gen([prompt], num_samples=3, method="neighbours", seed=1, allow_unseen=True, spread=0.1)
    torch.testing.assert_close(again[0]["state_dict"]["1.weight"], samples[0]["state_dict"]["1.weight"])
    # spread 0: the reconstruction of the prompt itself, in the prompt's weight scale
    w, _, which, layout_id = transfer.sample_neighbours(model, gen.feature_extractor, [prompt], 2, spread=0.0)
    torch.testing.assert_close(w[0], w[1])
    assert which.tolist() == [0, 0]
    big = TaskData("big", *(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)) * 3, 10)
    refusing = pipeline("weight-generation", model=str(folder), anchors=_anchors(model, tok, flat), task_data=big)
    with pytest.raises(ValueError, match="cannot take the inputs of task 'big'.*same input shape"):
        refusing(num_samples=1, method="kde30")


def test_transfer_table_compares_samples_prompts_and_scratch(trained):
    _, model, tok, _ = trained
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 8, 8, generator=g), torch.randint(0, 10, (60,), generator=g)
    task = TaskData("noise", x[:40], y[:40], x[40:50], y[40:50], x[50:], y[50:], 10)
    rows = transfer.transfer_table(model, WeightTokenizer.from_dict(tok.to_dict()), [_mlp(1), _mlp(2)], task,
                                   num_samples=2, epochs=(0, 1), batch_size=20)
    assert {(r["source"], r["epoch"]) for r in rows} == {(s, e) for s in ("neighbours", "reconstruction", "prompt", "scratch")
                                                        for e in (0, 1)}
    assert all(0.0 <= r["mean_acc"] <= 1.0 and r["num_models"] == 2 for r in rows)
    # epoch 0 of the prompts is the prompts' own test accuracy
    from hyperrep_hf.zoo import evaluate_accuracy

    prompt0 = next(r for r in rows if r["source"] == "prompt" and r["epoch"] == 0)
    own = evaluate_accuracy([_mlp(1), _mlp(2)], task, "test").double().mean()
    assert abs(prompt0["mean_acc"] - float(own)) < 1e-6
