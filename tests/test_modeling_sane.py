"""SaneModel: shapes, masking, batch independence, losses, bad input, save/load."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from hyperrep_hf import SaneConfig, SaneModel
from hyperrep_hf.losses import masked_reconstruction_mse, nt_xent
from hyperrep_hf.modeling_sane import pool_latents

TOKEN_SIZE = 12


def tiny_config(**overrides) -> SaneConfig:
    return SaneConfig.from_preset(
        "tiny", token_size=TOKEN_SIZE, d_model=32, latent_dim=8, window_size=10, max_positions=(64, 4, 16), **overrides
    )


def make_batch(batch: int, length: int, seed: int = 0):
    """Random standardised tokens with (n, l, k) positions of a 4-layer model."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, TOKEN_SIZE, generator=gen)
    n = torch.arange(length)
    positions = torch.stack([n, n * 4 // length, n % 16], dim=-1).expand(batch, length, 3).clone()
    return tokens, positions


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SaneModel(tiny_config()).eval()


def test_forward_shapes_and_auto_class(model):
    tokens, positions = make_batch(3, 7)
    out = model(tokens, positions, torch.ones(3, 7))
    assert out.latents.shape == (3, 7, 8)
    assert out.reconstruction.shape == (3, 7, TOKEN_SIZE)
    assert out.projection.shape == (3, 30)
    assert out.loss is None
    assert model.embed(tokens, positions).shape == (3, 8)
    assert model.embed(tokens, positions, pooling="full").shape == (3, 7 * 8)
    assert model.embed(tokens, positions, pooling="layer").shape == (3, 4 * 8)  # positions span 4 layers
    assert torch.allclose(model.decode(model.encode(tokens, positions), positions), out.reconstruction, atol=1e-6)
    assert type(AutoModel.from_config(tiny_config())) is SaneModel
    loss, latents, *_ = model(tokens, positions, targets=tokens, return_dict=False)
    assert latents.shape == (3, 7, 8) and loss.dim() == 0


def test_embedding_does_not_depend_on_batch_mates(model):
    """The reference's batch_first flaw mixed samples across the batch (METHOD.md §8)."""
    tokens, positions = make_batch(5, 9, seed=1)
    alone = model.embed(tokens[:1], positions[:1])
    with_mates = model.embed(tokens, positions)[:1]
    other_mates = model.embed(torch.cat([tokens[:1], 10 * torch.randn(4, 9, TOKEN_SIZE)]), positions)[:1]
    torch.testing.assert_close(with_mates, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(other_mates, alone, rtol=0, atol=1e-6)


def test_padding_does_not_change_real_tokens(model):
    tokens, positions = make_batch(1, 6, seed=2)
    short = model(tokens, positions)
    padded_tokens = torch.cat([tokens, 100 * torch.randn(1, 3, TOKEN_SIZE)], dim=1)
    padded_positions = torch.cat([positions, torch.tensor([[[6, 3, 6], [7, 3, 7], [8, 3, 8]]])], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0, 0]])
    padded = model(padded_tokens, padded_positions, mask)
    torch.testing.assert_close(padded.latents[:, :6], short.latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(padded.reconstruction[:, :6], short.reconstruction, rtol=0, atol=1e-5)
    assert padded.latents[:, 6:].abs().max() == 0 and padded.reconstruction[:, 6:].abs().max() == 0
    # Projection: the window of latents is zero-padded either way.
    torch.testing.assert_close(padded.projection, short.projection, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        model.embed(padded_tokens, padded_positions, mask), model.embed(tokens, positions), rtol=0, atol=1e-5
    )


def padded_batch():
    tokens, positions = make_batch(3, 9, seed=3)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    return tokens, positions, mask


def test_eager_attention_matches_sdpa_with_padding(tmp_path):
    torch.manual_seed(0)
    sdpa = SaneModel(tiny_config()).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    sdpa.save_pretrained(tmp_path)
    eager = SaneModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    tokens, positions, mask = padded_batch()
    torch.testing.assert_close(eager(tokens, positions, mask).latents, sdpa(tokens, positions, mask).latents,
                               rtol=0, atol=1e-5)
    eager.set_attn_implementation("sdpa")  # switchable on a live model (transformers' attention interface)
    torch.testing.assert_close(eager(tokens, positions, mask).latents, sdpa(tokens, positions, mask).latents)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_bf16_autocast_forward_and_backward_follow_fp32(implementation):
    """On a CPU bf16 autocast runs the spelled-out attention ("sdpa" included): same function, with
    padding, within bf16 rounding, and gradients that agree in direction."""
    torch.manual_seed(0)
    model = SaneModel(tiny_config(attn_implementation=implementation))
    tokens, positions, mask = padded_batch()
    grads = []
    for dtype in (None, torch.bfloat16):
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(tokens, positions, mask, targets=tokens)
        out.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        if dtype is None:
            reference = out.latents.detach()
        else:
            assert out.latents.dtype == torch.bfloat16
            torch.testing.assert_close(out.latents.float(), reference, rtol=0, atol=0.05)
            assert out.latents[1, 5:].abs().max() == 0
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_bf16_weights_load_and_embed_like_fp32(tmp_path):
    """from_pretrained(dtype=torch.bfloat16): half the memory, the bf16 attention path, same embedding
    up to bf16 rounding (padding still ignored)."""
    torch.manual_seed(0)
    fp32 = SaneModel(tiny_config()).eval()
    fp32.save_pretrained(tmp_path)
    bf16 = SaneModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert bf16.dtype == torch.bfloat16
    tokens, positions, mask = padded_batch()
    got = bf16.embed(tokens.bfloat16(), positions, mask)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), fp32.embed(tokens, positions, mask), rtol=0, atol=0.05)


def test_sequences_longer_than_the_window_get_no_projection(model):
    tokens, positions = make_batch(2, 12)
    out = model(tokens, positions)
    assert out.projection is None and out.latents.shape == (2, 12, 8)
    with pytest.raises(ValueError, match="window_size=10"):
        model(tokens, positions, targets=tokens, num_views=2)


def test_two_view_loss_is_gamma_mix_of_nt_xent_and_masked_reconstruction(model):
    tokens, positions = make_batch(4, 8, seed=3)
    targets = tokens + 0.1
    value_mask = torch.rand(4, 8, TOKEN_SIZE, generator=torch.Generator().manual_seed(0)) > 0.2
    mask = torch.ones(4, 8)
    mask[2, 6:] = 0
    out = model(tokens, positions, mask, targets=targets, value_mask=value_mask, num_views=2)
    real = value_mask & mask.bool().unsqueeze(-1)
    rec = masked_reconstruction_mse(out.reconstruction, targets, real)
    con = nt_xent(out.projection[:2], out.projection[2:], 0.1)
    assert out.reconstruction_loss.item() == pytest.approx(rec.item(), rel=1e-6)
    assert out.contrastive_loss.item() == pytest.approx(con.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.05 * con.item() + 0.95 * rec.item(), rel=1e-6)
    # Values outside the mask never count.
    changed = targets.masked_fill(~real, 1e6)
    again = model(tokens, positions, mask, targets=changed, value_mask=value_mask, num_views=2)
    assert again.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    one_view = model(tokens, positions, mask, targets=targets, value_mask=value_mask)
    assert one_view.loss.item() == pytest.approx(rec.item(), rel=1e-6) and one_view.contrastive_loss is None


def test_layer_wise_loss_normalisation_divides_by_layer_sigma():
    torch.manual_seed(0)
    config = tiny_config()
    model = SaneModel(config).eval()
    assert torch.equal(model.layer_sigma, torch.ones(4))  # standardised tokens: a no-op
    tokens, positions = make_batch(2, 8, seed=4)
    plain = model(tokens, positions, targets=tokens).loss
    model.set_layer_sigma([0.5, 2.0, 1e-9])  # layer 3 keeps sigma 1; 1e-9 is floored at 1e-4
    assert model.layer_sigma.tolist() == pytest.approx([0.5, 2.0, 1e-4, 1.0])
    out = model(tokens, positions, targets=tokens)
    sigma = model.layer_sigma[positions[..., 1]]
    expected = (((out.reconstruction - tokens) / sigma.unsqueeze(-1)) ** 2).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() != pytest.approx(plain.item())
    config_off = tiny_config(layer_loss_norm=False)
    off = SaneModel(config_off).eval()
    off.load_state_dict(model.state_dict())
    assert off(tokens, positions, targets=tokens).loss.item() == pytest.approx(plain.item(), rel=1e-6)
    with pytest.raises(ValueError, match="4 layers"):
        model.set_layer_sigma(torch.ones(5))


def test_tiny_model_learns_to_reconstruct():
    torch.manual_seed(0)
    model = SaneModel(tiny_config()).train()
    tokens, positions = make_batch(4, 10, seed=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(tokens, positions, targets=tokens, num_views=2).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda t, p: dict(tokens=t[..., :-1], positions=p), r"\[batch, tokens, 12\], got \(2, 5, 11\)"),
        (lambda t, p: dict(tokens=t, positions=p + torch.tensor([0, 0, 20])), r"max_positions.*\(64, 4, 16\).*max \[4, 3, 24\]"),
        (lambda t, p: dict(tokens=t, positions=p - 1), "found min"),
        (lambda t, p: dict(tokens=t, positions=p.float()), "integer tensor"),
        (lambda t, p: dict(tokens=t, positions=p[..., :2]), r"positions must have shape \[2, 5, 3\]"),
        (lambda t, p: dict(tokens=t, positions=p, attention_mask=torch.ones(2, 6)), r"attention_mask must have shape \[2, 5\]"),
        (lambda t, p: dict(tokens=t, positions=p, attention_mask=torch.zeros(2, 5)), "without any real token"),
        (lambda t, p: dict(tokens=t, positions=p, targets=t[:, :4]), "targets must have the shape"),
        (lambda t, p: dict(tokens=t, positions=p, targets=t, value_mask=torch.ones(2, 5, 3)), "value_mask must have"),
        (lambda t, p: dict(tokens=t[:1], positions=p[:1], num_views=2), "even batch"),
        (lambda t, p: dict(tokens=t, positions=p, num_views=3), "num_views must be 1 or 2"),
    ],
)
def test_bad_input_gets_a_clear_error(model, make_input, message):
    tokens, positions = make_batch(2, 5)
    with pytest.raises(ValueError, match=message):
        model(**make_input(tokens, positions))


def test_layer_pooling_averages_each_layer_of_real_tokens():
    latents = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    layer = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 1, 0, 0]])
    positions = torch.stack([torch.arange(5).expand(2, 5), layer, torch.zeros(2, 5, dtype=torch.long)], -1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    latents[1, 3:] = 1e6  # padding must not count
    pooled = pool_latents(latents, mask, "layer", positions).reshape(2, 3, 2)
    torch.testing.assert_close(pooled[0], torch.stack([latents[0, :2].mean(0), latents[0, 2:4].mean(0), latents[0, 4]]))
    torch.testing.assert_close(pooled[1], torch.stack([latents[1, 0], latents[1, 1:3].mean(0), torch.zeros(2)]))
    # the token-count-weighted mean of the layer means is the "mean" pooling
    counts = torch.tensor([2.0, 2.0, 1.0])
    torch.testing.assert_close((pooled[0] * counts[:, None]).sum(0) / 5, pool_latents(latents, mask, "mean")[0])
    with pytest.raises(ValueError, match="needs the tokens' positions"):
        pool_latents(latents, mask, "layer")


def test_bad_pooling_is_named(model):
    tokens, positions = make_batch(1, 4)
    with pytest.raises(ValueError, match="pooling"):
        model.embed(tokens, positions, pooling="max")


def test_init_weights_covers_every_parameter_and_buffer(tmp_path):
    """transformers 5 builds on the meta device: keys missing from a checkpoint come from _init_weights."""
    torch.manual_seed(0)
    model = SaneModel(tiny_config())
    model.set_layer_sigma([3.0])
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    for key in ("layer_sigma", "encoder.ln_final.weight", "decoder.positions.pe_k.weight"):
        del weights[key]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = SaneModel.from_pretrained(tmp_path, strict=False)
    assert torch.equal(loaded.layer_sigma, torch.ones(4))
    assert torch.equal(loaded.encoder.ln_final.weight, torch.ones(32))
    assert 0.015 < loaded.decoder.positions.pe_k.weight.std().item() < 0.025
    for name, tensor in loaded.state_dict().items():
        assert torch.isfinite(tensor).all(), name


def test_checkpoint_with_missing_or_unexpected_keys_is_an_error(tmp_path):
    SaneModel(tiny_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["decoder.head.bias"]
    weights["encoder.extra.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys.*decoder\.head\.bias.*unexpected keys.*encoder\.extra\.weight"):
        AutoModel.from_pretrained(tmp_path)


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = SaneModel(tiny_config(dropout=0.1))
    model.set_layer_sigma([0.5, 0.25])
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is SaneModel and not loaded.training
    original = model.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    assert loaded.dtype == torch.float32
    tokens, positions = make_batch(2, 6)
    model.eval()
    assert torch.equal(loaded(tokens, positions).latents, model(tokens, positions).latents)


def test_fresh_process_loads_with_automodel_after_import(tmp_path):
    torch.manual_seed(0)
    model = SaneModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    tokens, positions = make_batch(2, 6)
    torch.save({"tokens": tokens, "positions": positions, "latents": model.encode(tokens, positions)}, tmp_path / "io.pt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "sane" and config["architectures"] == ["SaneModel"]
    script = textwrap.dedent(
        f"""
        import torch
        import hyperrep_hf  # registers the Auto classes
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        assert type(model).__module__ == "hyperrep_hf.modeling_sane", type(model)
        assert torch.equal(model.encode(io["tokens"], io["positions"]), io["latents"])
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
