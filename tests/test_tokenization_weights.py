"""The weight tokenizer: build a model, tokenize, decode, compare."""

import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from hyperrep_hf.layout import WeightLayout
from hyperrep_hf.tokenization_weights import LayerSpec, WeightTokenizer
from hyperrep_hf.zoo import build_model


def assert_same_state_dict(decoded, model_or_sd):
    expected = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    assert set(decoded) == set(expected)
    for name, t in expected.items():
        if t.is_floating_point():
            assert decoded[name].dtype == t.dtype, name
            assert torch.equal(decoded[name], t), name


def randomize(model, seed=0):
    """Random values everywhere, including BatchNorm running statistics (variances positive, as
    in every real model: decode raises a negative one to a floor)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
                if name.endswith("running_var"):
                    t.abs_()
    return model


class SmallTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3, bias=False)


MODELS = {
    "mlp": lambda: build_model("mlp"),
    "cnn-s": lambda: build_model("cnn-s"),
    "cnn-l": lambda: build_model("cnn-l"),
    "vgg-s": lambda: build_model("vgg-s"),
    "transformer": SmallTransformer,
    "conv-transpose-1d-3d": lambda: nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, groups=2), nn.ConvTranspose1d(3, 5, 2, bias=False),
        nn.Conv1d(3, 4, 3), nn.Conv3d(2, 3, 2, bias=False), nn.ConvTranspose3d(2, 2, 2)),
    "norms-no-bias": lambda: nn.Sequential(
        nn.Linear(8, 6, bias=False), nn.LayerNorm(6), nn.GroupNorm(2, 6), nn.BatchNorm1d(6),
        nn.LayerNorm(6, bias=False), nn.InstanceNorm1d(6, affine=True, track_running_stats=True)),
    "mha-kdim": lambda: nn.ModuleDict({"att": nn.MultiheadAttention(8, 2, kdim=5, vdim=6, add_bias_kv=True)}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_bit_exact(name):
    model = randomize(MODELS[name]())
    tok = WeightTokenizer(token_size=7)
    enc = tok(model)
    assert enc["tokens"].dtype == torch.float32 and enc["tokens"].shape[-1] == 7
    state_dict = tok.decode(enc)[0]
    assert_same_state_dict(state_dict, model)
    MODELS[name]().load_state_dict(state_dict, strict=True)


def test_resnet18_at_288_gives_the_reference_token_count_and_round_trips():
    model = build_model("resnet18")
    tok = WeightTokenizer(token_size="auto")  # the longest row is 4,608 (no bias): capped at 288
    enc = tok(model)
    assert tok.token_size == 288
    assert enc["tokens"].shape == (1, 53_524, 288)
    # BatchNorm: weight+bias, running_mean, running_var = 3 tokens per channel; 4,800 channels
    assert tok.layouts[0].num_tokens - 3 * 4_800 == 39_124
    state_dict = tok.decode(enc)[0]
    assert_same_state_dict(state_dict, model)
    assert int(state_dict["bn1.num_batches_tracked"]) == 0


def test_auto_token_size_is_201_for_cnn_s_and_counts_bias():
    tok = WeightTokenizer()
    enc = tok(build_model("cnn-s"))
    assert tok.token_size == 201  # 8 * 5 * 5 + 1
    assert enc["tokens"].shape == (1, 48, 201)
    no_bias = WeightTokenizer()
    no_bias(nn.Sequential(nn.Linear(30, 4, bias=False), nn.Linear(4, 2)))
    assert no_bias.token_size == 30


def test_rows_chunks_positions_and_masks_follow_the_method():
    model = randomize(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Linear(4, 2)))  # rows of 19 and 5 values
    tok = WeightTokenizer(token_size=8)
    enc = tok(model)
    tokens, positions, mask = enc["tokens"][0], enc["positions"][0], enc["value_mask"][0]
    assert tokens.shape == (3 * 3 + 2, 8)  # 19 values -> 3 chunks per channel
    assert positions[:, 0].tolist() == list(range(11))
    assert positions[:, 1].tolist() == [0] * 9 + [1] * 2
    assert positions[:, 2].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1]
    row1 = torch.cat([model[0].weight[1].reshape(-1), model[0].bias[1:2]])
    assert torch.equal(tokens[3:6].reshape(-1)[:19], row1.detach())
    assert mask[5].tolist() == [True] * 3 + [False] * 5
    assert (tokens[~mask] == 0).all()
    assert enc["attention_mask"].tolist() == [[1] * 11]


def test_conv_transpose_tokens_are_output_channels():
    model = randomize(nn.ConvTranspose2d(3, 4, 2))  # weight [in=3, out=4, 2, 2]
    tok = WeightTokenizer(token_size=13)
    tokens = tok(model)["tokens"][0]
    assert tokens.shape == (4, 13)
    expected = torch.cat([model.weight[:, 2].reshape(-1), model.bias[2:3]]).detach()
    assert torch.equal(tokens[2], expected)


def test_dtypes_round_trip_in_their_own_dtype():
    model = randomize(build_model("cnn-s"))
    tok = WeightTokenizer()
    for dtype in (torch.float16, torch.bfloat16):
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        assert_same_state_dict(tok.decode(tok(sd))[0], sd)
    sd64 = {k: v.double() for k, v in model.state_dict().items()}
    back = tok.decode(tok(sd64))[0]
    assert all(t.dtype == torch.float64 for t in back.values())
    assert all(torch.equal(back[k], sd64[k].float().double()) for k in sd64)
    assert len(tok.layouts) == 3  # one per dtype, sharing one plan
    assert tok.layouts[0].layers == tok.layouts[2].layers


def test_padded_batch_of_two_architectures(tmp_path):
    small, large = randomize(build_model("cnn-s")), randomize(build_model("cnn-l"), seed=1)
    save_file(large.state_dict(), tmp_path / "large.safetensors")
    tok = WeightTokenizer(token_size=64)
    enc = tok([small, str(tmp_path / "large.safetensors")])
    n_small, n_large = (tok.layouts[i].num_tokens for i in enc["layout_id"].tolist())
    assert enc["tokens"].shape == (2, max(n_small, n_large), 64)
    assert enc["attention_mask"].sum(1).tolist() == [n_small, n_large]
    assert (enc["tokens"][0, n_small:] == 0).all() and (enc["positions"][0, n_small:] == 0).all()
    first, second = tok.decode(enc)
    assert_same_state_dict(first, small)
    assert_same_state_dict(second, large)


def test_zoo_batch_path_matches_single_models():
    models = [randomize(build_model("cnn-s"), seed=s) for s in range(5)]
    tok = WeightTokenizer()
    single = torch.cat([tok(m)["tokens"] for m in models])
    layout = tok.layouts[0].weights
    flat = layout.flatten_many([m.state_dict() for m in models])
    enc = tok.tokenize_flat(flat)
    assert torch.equal(enc["tokens"], single)
    assert enc["positions"].shape == (5, 48, 3) and enc["value_mask"].shape == (5, 48, 201)
    assert torch.equal(tok.decode_flat(enc["tokens"]), flat)


def test_standardization_fit_apply_invert_and_save_load(tmp_path):
    train = [randomize(build_model("vgg-s"), seed=s) for s in range(4)]
    with torch.no_grad():
        for m in train:
            m[0].weight.mul_(5).add_(3)  # a layer far from N(0, 1)
    tok = WeightTokenizer(token_size=32).fit_standardization(train)
    sigma = tok.layer_std()
    assert sigma.shape == (tok.layouts[0].num_layers,)
    assert sigma[0].item() == pytest.approx(5.0, rel=0.15)
    enc = tok(train[0])
    tokens, mask = enc["tokens"][0], enc["value_mask"][0]
    layer0 = tokens[enc["positions"][0, :, 1] == 0][mask[enc["positions"][0, :, 1] == 0]]
    assert abs(layer0.mean().item()) < 0.5 and (tokens[~mask] == 0).all()
    back = tok.decode(enc)[0]
    for name, t in train[0].state_dict().items():
        if t.is_floating_point():
            torch.testing.assert_close(back[name], t, rtol=1e-6, atol=1e-6 * max(1.0, t.abs().max().item()))
    raw = tok(train[0], standardize=False)
    assert_same_state_dict(tok.decode(raw, standardized=False)[0], train[0])

    tok.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").exists() and not (tmp_path / "config.json").exists()
    loaded = WeightTokenizer.from_pretrained(tmp_path)
    assert torch.equal(loaded.layer_std(), sigma)
    assert torch.equal(loaded(train[0])["tokens"], enc["tokens"])
    # decoding needs no model object: only the saved tokenizer
    assert torch.equal(loaded.decode(enc)[0]["0.weight"], back["0.weight"])


def test_per_layer_statistics_are_mean_of_means_and_root_mean_variance():
    flat = torch.tensor([[1.0, 3.0, 0.0, 0.0], [5.0, 7.0, 0.0, 0.0]])  # Linear(1, 2): weight [2,1], bias [2]
    tok = WeightTokenizer(token_size=2, min_std=1e-3, statistics="mean")
    tok(nn.Linear(1, 2))
    tok.fit_standardization(flat)
    layout = tok.layouts[0]
    # per-model means 1 and 3 (weights and bias together), variances 1.5 and 9.5
    assert layout.mean.tolist() == pytest.approx([2.0])
    assert layout.std.tolist() == pytest.approx([math.sqrt((1.5 + 9.5) / 2)])
    tok.fit_standardization(torch.zeros(3, 4))
    assert tok.layouts[0].std.tolist() == [1e-3]  # floored


def test_median_statistics_and_soft_clip_tame_exploded_models(tmp_path):
    """A hyperparameter zoo holds a few models whose weights exploded (1000x the rest): the median
    statistics keep the typical model's scale, the soft clip bounds the exploded model's tokens,
    and decoding inverts both."""
    torch.manual_seed(0)
    flat = torch.randn(7, 4) * 0.1
    flat[6] *= 1e4  # one exploded model
    mean_tok = WeightTokenizer(token_size=2, statistics="mean", soft_clip=None)
    median_tok = WeightTokenizer(token_size=2)
    for tok in (mean_tok, median_tok):
        tok(nn.Linear(1, 2))
        tok.fit_standardization(flat)
    assert mean_tok.layouts[0].std.item() > 100  # the exploded model sets the scale
    typical = flat[:6].std(1, correction=0)
    assert typical.min() <= median_tok.layouts[0].std.item() <= typical.max()
    tokens = median_tok.tokenize_flat(flat)["tokens"]
    c = median_tok.soft_clip
    assert tokens[:6].abs().max() < 3.5  # typical models: O(1) values, about linear
    assert tokens[6].abs().max() < c * math.asinh(1e5 / c)  # logarithmic, not 1e4-sized
    torch.testing.assert_close(median_tok.decode_flat(tokens), flat, rtol=1e-5, atol=1e-6)
    median_tok.save_pretrained(tmp_path)
    loaded = WeightTokenizer.from_pretrained(tmp_path)
    assert loaded.layouts[0].clip == c and loaded.statistics == "median"
    assert torch.equal(loaded.tokenize_flat(flat)["tokens"], tokens)
    with pytest.raises(ValueError, match="statistics must be one of"):
        WeightTokenizer(statistics="max")
    with pytest.raises(ValueError, match="soft_clip must be a positive number or None"):
        WeightTokenizer(soft_clip=0)


def test_save_and_load_with_auto_feature_extractor_in_a_fresh_process(tmp_path):
    tok = WeightTokenizer()
    enc = tok(build_model("cnn-s"))
    tok.save_pretrained(tmp_path)
    torch.save(enc["tokens"], tmp_path / "tokens.pt")
    code = (
        "import torch, hyperrep_hf\n"
        "from transformers import AutoFeatureExtractor\n"
        f"tok = AutoFeatureExtractor.from_pretrained({str(tmp_path)!r})\n"
        "assert type(tok).__name__ == 'WeightTokenizer' and tok.token_size == 201\n"
        f"sd = tok.decode(torch.load({str(tmp_path / 'tokens.pt')!r}))[0]\n"
        "print(sorted(sd)[0], tuple(sd['0.weight'].shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.bias", "(8,", "1,", "5,", "5)"]


def test_register_a_handler_for_a_custom_layer():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.randn(4))
            self.offset = nn.Parameter(torch.randn(4))

    model = nn.Sequential(nn.Linear(3, 4), Scale())
    with pytest.raises(ValueError, match=r"module '1' of type Scale .*register_layer_handler"):
        WeightTokenizer()(model)
    WeightTokenizer.register_layer_handler(Scale, lambda m: [LayerSpec("gain", "offset")])
    tok = WeightTokenizer()
    enc = tok(model)
    assert enc["positions"][0, :, 1].max() == 1
    assert_same_state_dict(tok.decode(enc)[0], model)


# -- bad input --


def test_nonfinite_weights_are_named_unless_allowed():
    model = build_model("cnn-s")
    with torch.no_grad():
        model[4].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'4.weight' holds NaN or inf.*allow_nonfinite=True"):
        WeightTokenizer()(model)
    tok = WeightTokenizer(allow_nonfinite=True)
    assert tok(model)["tokens"].isnan().sum() == 1
    flat = tok.layouts[0].weights.flatten(model.state_dict()).unsqueeze(0).repeat(3, 1)
    flat[0] = 0.0
    with pytest.raises(ValueError, match=r"zoo row 1: weight tensor '4.weight'"):
        WeightTokenizer(token_size=201, layouts=[tok.layouts[0].to_dict()]).tokenize_flat(flat)


def test_decoding_tokens_of_another_layout_names_the_first_mismatching_layer():
    tok = WeightTokenizer(token_size=201)
    tok(build_model("cnn-s"))
    other = WeightTokenizer(token_size=201)
    enc = other(build_model("cnn-s", num_classes=7))  # the last layer has 7 channels, not 10
    with pytest.raises(ValueError, match=r"layer '14.weight' expects tokens of shape \[10, 201\].*found \[7, 201\]"):
        tok.decode(enc["tokens"])
    with pytest.raises(ValueError, match=r"from token 45 on: layer '14.weight' expects .*\[10, 201\].*found \[7, 201\]"):
        tok.decode(enc)
    enc_l = other(build_model("cnn-l"))  # 16 channels in the first conv, cnn-s has 8
    with pytest.raises(ValueError, match=r"from token 8 on: layer '4.weight' expects tokens of shape \[6, 201\]"):
        tok.decode(enc_l | {"layout_id": torch.tensor([0])})
    with pytest.raises(ValueError, match="token_size 100, this tokenizer's layout uses 201"):
        tok.decode(torch.zeros(1, 48, 100))


def test_unsupported_empty_and_wrong_inputs():
    with pytest.raises(ValueError, match="empty model"):
        WeightTokenizer()(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="empty"):
        WeightTokenizer()({})
    with pytest.raises(ValueError, match="cannot tokenize a int"):
        WeightTokenizer()(3)
    with pytest.raises(FileNotFoundError):
        WeightTokenizer()("missing.safetensors")
    with pytest.raises(ValueError, match="token_size must be a positive integer or 'auto'"):
        WeightTokenizer(token_size=0)
    with pytest.raises(ValueError, match="has seen no model"):
        WeightTokenizer().decode_flat(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"expected flat weights \[num_models, 2464\]"):
        tok = WeightTokenizer()
        tok(build_model("cnn-s"))
        tok.tokenize_flat(torch.zeros(2, 100))


def test_wrong_token_size_or_corrupt_file_on_load(tmp_path):
    tok = WeightTokenizer()
    tok(build_model("cnn-s"))
    tok.save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    record = json.loads(path.read_text())
    for bad, message in [({"token_size": -3}, "token_size must be a positive integer"),
                         ({"token_size": "auto"}, "must have an integer token_size"),
                         ({"layouts": [{"weights": []}]}, "corrupt token layout record"),
                         ({"format_version": 99}, "format_version 99 is not supported")]:
        path.write_text(json.dumps(record | bad))
        with pytest.raises(ValueError, match=message):
            WeightTokenizer.from_pretrained(tmp_path)
    path.write_text(json.dumps(record)[:200])
    with pytest.raises(OSError, match="not a valid JSON file"):
        WeightTokenizer.from_pretrained(tmp_path)


# -- property test over random architectures --

LAYER_KINDS = st.sampled_from(["linear", "linear-nobias", "conv", "convT", "bn", "ln", "gn", "embed"])


def build_random(kinds, widths):
    layers = []
    for kind, w in zip(kinds, widths):
        layers.append({
            "linear": lambda w=w: nn.Linear(w + 1, w),
            "linear-nobias": lambda w=w: nn.Linear(w, w + 2, bias=False),
            "conv": lambda w=w: nn.Conv2d(w, w + 1, 3),
            "convT": lambda w=w: nn.ConvTranspose2d(2 * w, 2 * w + 2, 2, groups=2),
            "bn": lambda w=w: nn.BatchNorm2d(w),
            "ln": lambda w=w: nn.LayerNorm(w),
            "gn": lambda w=w: nn.GroupNorm(1, w),
            "embed": lambda w=w: nn.Embedding(w + 3, w),
        }[kind]())
    return nn.Sequential(*layers)


@settings(max_examples=25, deadline=None)
@given(kinds=st.lists(LAYER_KINDS, min_size=1, max_size=5), widths=st.lists(st.integers(1, 6), min_size=5, max_size=5),
       token_size=st.one_of(st.just("auto"), st.integers(1, 40)), seed=st.integers(0, 1000))
def test_round_trip_property(kinds, widths, token_size, seed):
    model = randomize(build_random(kinds, widths), seed)
    tok = WeightTokenizer(token_size=token_size)
    enc = tok(model)
    assert enc["value_mask"][0].sum() == sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert_same_state_dict(tok.decode(enc)[0], model)
    assert torch.equal(tok.decode_flat(tok.tokenize_flat(tok.layouts[0].weights.flatten(model.state_dict()))["tokens"])[0],
                       tok.layouts[0].weights.flatten(model.state_dict()))


def test_cli_tokenize_checks_the_round_trip_and_saves(tmp_path, capsys):
    from hyperrep_hf.cli import main

    assert main(["tokenize", "--arch", "cnn-s", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "48 tokens of size 201" in out and "round trip: exact" in out and "layer l 0..4" in out
    assert WeightTokenizer.from_pretrained(tmp_path).token_size == 201
    assert main(["tokenize", "--arch", "nope"]) == 2
    assert "unknown architecture 'nope'" in capsys.readouterr().err


def test_alignment_reference_gives_permuted_copies_the_same_tokens_and_survives_save_load(tmp_path):
    from hyperrep_hf.weightspace import permutation_spec, random_permutation

    torch.manual_seed(0)
    reference = build_model("cnn-s").eval()
    layout = WeightLayout.from_state_dict(reference.state_dict())
    tok = WeightTokenizer()
    expected = tok(reference)["tokens"]
    permuted = random_permutation(reference, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(tok(permuted)["tokens"], expected)

    tok.set_alignment(layout.flatten(reference.state_dict()), permutation_spec(reference))
    assert torch.equal(tok(permuted)["tokens"], expected)
    assert torch.equal(tok.tokenize_flat(layout.flatten(permuted.state_dict()).unsqueeze(0))["tokens"], expected)
    assert not torch.equal(tok(permuted, align=False)["tokens"], expected)
    # aligning never changes what the model computes
    aligned = build_model("cnn-s").eval()
    aligned.load_state_dict(tok.decode(tok(permuted))[0])
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(aligned(x), permuted(x), atol=1e-5)

    tok.save_pretrained(tmp_path)
    loaded = WeightTokenizer.from_pretrained(tmp_path)
    assert torch.equal(loaded(permuted)["tokens"], expected)
    with pytest.raises(ValueError, match="alignment reference has 5 weights"):
        tok.set_alignment(torch.zeros(5), permutation_spec(reference))
    with pytest.raises(ValueError, match="no alignment reference"):
        WeightTokenizer()(reference, align=True)


def test_decode_follows_the_encodings_standardized_flag():
    """Tokens made with standardize=False come back as the model, also from a fitted tokenizer."""
    train = [randomize(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), seed=s) for s in range(4)]
    with torch.no_grad():
        for m in train:
            m[0].weight.mul_(5).add_(3)
    tok = WeightTokenizer(token_size=8).fit_standardization(train)
    raw = tok(train[0], standardize=False)
    assert raw["standardized"].tolist() == [False] and tok(train[0])["standardized"].tolist() == [True]
    assert_same_state_dict(tok.decode(raw)[0], train[0])
    flat = WeightLayout.from_state_dict(train[0].state_dict()).flatten(train[0].state_dict())
    assert torch.equal(tok.decode_flat(raw)[0], flat)
    # rows of one batch tokenized each way decode each their own way
    rows = torch.stack([WeightLayout.from_state_dict(m.state_dict()).flatten(m.state_dict()) for m in train[:2]])
    raw_rows, std_rows = tok.tokenize_flat(rows, standardize=False), tok.tokenize_flat(rows)
    mixed = {**std_rows, "tokens": torch.stack([raw_rows["tokens"][0], std_rows["tokens"][1]]),
             "standardized": torch.tensor([False, True])}
    torch.testing.assert_close(tok.decode_flat(mixed), rows, rtol=1e-6, atol=1e-5)
    # the argument still overrides what the encoding says; bare tokens follow the fitted layout
    assert not torch.equal(tok.decode(raw, standardized=True)[0]["0.weight"], train[0][0].weight)
    torch.testing.assert_close(tok.decode_flat(std_rows["tokens"]), rows, rtol=1e-6, atol=1e-5)


def test_a_decoded_negative_batchnorm_running_var_is_raised_to_the_floor():
    from hyperrep_hf.tokenization_weights import RUNNING_VAR_FLOOR

    model = randomize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([0.5, 1e-7, 2.0, 3.0]))
    tok = WeightTokenizer(token_size=10)
    enc = tok(model)
    assert_same_state_dict(tok.decode(enc)[0], model)  # a real model's variances come back exactly
    var_tokens = enc["positions"][0, :, 1] == tok.layouts[0].layer_names.index("1.running_var")
    generated = enc["tokens"].clone()
    generated[0, var_tokens, 0] = torch.tensor([-0.3, 0.2, -1e-6, 4.0])  # what a decoder may produce
    decoded = tok.decode({**enc, "tokens": generated})[0]["1.running_var"]
    assert decoded.tolist() == pytest.approx([RUNNING_VAR_FLOOR, 0.2, RUNNING_VAR_FLOOR, 4.0])
    assert torch.isfinite(nn.functional.batch_norm(torch.randn(2, 4, 3, 3), torch.zeros(4), decoded)).all()
    flat = tok.decode_flat(generated)[0]
    offset = tok.layouts[0].weights.offsets[[e.name for e in tok.layouts[0].weights.entries].index("1.running_var")]
    assert flat[offset:offset + 4].tolist() == pytest.approx([RUNNING_VAR_FLOOR, 0.2, RUNNING_VAR_FLOOR, 4.0])


@pytest.mark.parametrize("name", ["cnn-s", "conv-transpose-1d-3d", "norms-no-bias", "mha-kdim"])
def test_a_token_range_equals_the_whole_tokenization_cut_and_reads_only_its_layers(name):
    models = [randomize(MODELS[name](), seed=s) for s in range(3)]
    tok = WeightTokenizer(token_size=7, soft_clip=2.0)
    layout = WeightLayout.from_state_dict(models[0].state_dict())
    tok.layout_of(models[0])
    flat = torch.stack([layout.flatten(m.state_dict()) for m in models])
    tl = tok.layouts[0]
    for standardized in (False, True):
        if standardized:
            tok.fit_standardization(flat)
        full = tok.tokenize_flat(flat)
        N = tl.num_tokens
        for start, stop in [(0, N), (0, 1), (N - 1, N), (N // 3, N // 3 + 5), (1, N - 1)]:
            stop = min(stop, N)
            part = tok.tokenize_range(flat, start, stop)
            for key in ("tokens", "positions", "attention_mask", "value_mask"):
                assert torch.equal(part[key], full[key][:, start:stop]), (key, start, stop)
            assert part["standardized"].tolist() == [standardized] * 3
    # only the entries of the layers a range covers are read
    read = []
    tl.encode_range_into(torch.empty(3, 2, 7), lambda e, o: read.append(e.name) or flat[:, o:o + e.numel], 0, 2, True)
    first = tl.blocks[0]
    assert set(read) <= {first.spec.weight, first.spec.bias} | {b.spec.weight for b in tl.blocks if b.n0 < 2}
    with pytest.raises(ValueError, match="outside the model's"):
        tok.tokenize_range(flat, 0, tl.num_tokens + 1)


def test_standardization_from_chunked_moments_equals_the_whole_fit():
    models = [randomize(build_model("cnn-s"), seed=s) for s in range(7)]
    layout = WeightLayout.from_state_dict(models[0].state_dict())
    flat = torch.stack([layout.flatten(m.state_dict()) for m in models])
    for statistics in ("median", "mean"):
        whole, chunked = (WeightTokenizer(token_size=16, statistics=statistics) for _ in range(2))
        whole.layout_of(models[0])
        chunked.layout_of(models[0])
        whole.fit_standardization(flat)
        moments = [chunked.layer_moments(flat[i:i + 3]) for i in range(0, 7, 3)]
        chunked.fit_standardization_from_moments(torch.cat([m[0] for m in moments]), torch.cat([m[1] for m in moments]))
        assert torch.equal(whole.layouts[0].mean, chunked.layouts[0].mean)
        assert torch.equal(whole.layouts[0].std, chunked.layouts[0].std)
    with pytest.raises(ValueError, match="moments must be"):
        chunked.fit_standardization_from_moments(torch.zeros(2, 3), torch.zeros(2, 3))
