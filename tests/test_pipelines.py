"""The weight-embedding, weight-property-prediction and weight-generation pipelines, the result tables
and the embed / probe / sample commands, on a small digits zoo with a randomly initialised SANE
checkpoint (mechanics, not quality)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import pipeline

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.cli import main as cli
from hyperrep_hf.downstream.embedding import decode, embed_flat, encode
from hyperrep_hf.downstream.evaluation import (
    fit_probes,
    format_table,
    generation_table,
    probe_table,
)
from hyperrep_hf.downstream.generation import (
    ModelGenerator,
    SamplingAnchors,
    load_checkpoint,
    prepare_sampling,
)
from hyperrep_hf.downstream.probes import ProbeSet
from hyperrep_hf.zoo import build_zoo, evaluate_accuracy


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo("digits-seed", tmp_path_factory.mktemp("zoo"), num_models=8, epochs=1, progress=False)


@pytest.fixture(scope="module")
def checkpoint(zoo, tmp_path_factory):
    """A SANE checkpoint folder: random tiny model (window 16 < the 44 tokens of the digits CNN, so
    sliding windows are used), a tokenizer fitted on the zoo's train split, probes and anchors."""
    folder = tmp_path_factory.mktemp("checkpoint")
    train = zoo.weights("train")
    tok = WeightTokenizer()
    tok.layout_of(zoo.build_model(train[0]))
    tok.fit_standardization(train)
    torch.manual_seed(0)
    model = SaneModel(SaneConfig.from_preset("tiny", token_size=tok.token_size, window_size=16)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    fit_probes(zoo, "sane", folder, model, tok, ["test_acc", "epoch"]).save(folder)
    prepare_sampling(folder, zoo, model=model, tokenizer=tok, progress=False)
    return folder


@pytest.fixture(scope="module")
def embedder(checkpoint):
    return pipeline("weight-embedding", model=str(checkpoint))


def test_embedding_takes_every_input_kind_and_batches_without_mixing(zoo, embedder, tmp_path):
    weights = zoo.weights("test")
    m0, m1 = zoo.build_model(weights[0]), zoo.build_model(weights[1])
    save_file(m1.state_dict(), tmp_path / "m1.safetensors")
    single = embedder(m0)
    assert single.shape == (embedder.model.config.latent_dim,)
    batch = embedder([m0, m1.state_dict(), str(tmp_path / "m1.safetensors"), dict(zoo.dataset["test"][0]), weights[1]], batch_size=2)
    torch.testing.assert_close(batch[0], single)
    torch.testing.assert_close(batch[3], single)
    for e in batch[1:3] + batch[4:]:
        torch.testing.assert_close(e, embedder(m1))
    # a whole zoo split, read in slices, agrees with the row-by-row route
    split = embedder(zoo.dataset["test"], batch_size=3)
    assert len(split) == len(weights)
    torch.testing.assert_close(split[0], single)
    torch.testing.assert_close(torch.stack(split), embed_flat(embedder.model, embedder.feature_extractor, weights))


def test_full_sequence_pooling_and_sliding_windows(zoo, checkpoint):
    # window arithmetic, checked to float precision on the CPU (GPU attention kernels differ by length)
    embedder = pipeline("weight-embedding", model=str(checkpoint), device="cpu")
    model = zoo.build_model(zoo.weights("test")[0])
    full = embedder(model, pooling="full")
    n_tokens = embedder.feature_extractor.layouts[0].num_tokens
    assert full.shape == (n_tokens, embedder.model.config.latent_dim)
    torch.testing.assert_close(full.mean(0), embedder(model))
    # One window as long as the model: exactly the SANE encoder on the whole sequence.
    enc = embedder.feature_extractor(model)
    whole = embedder.model.encode(enc["tokens"], enc["positions"], enc["attention_mask"])
    torch.testing.assert_close(embedder(model, pooling="full", window_size=64), whole[0])
    # Sliding windows (16 tokens, halo 4): each kept centre is the encoder's output on its own window.
    windowed = encode(embedder.model, enc, window_size=16, halo=4)[0]
    second = embedder.model.encode(enc["tokens"][:, 4:20], enc["positions"][:, 4:20])[0]
    torch.testing.assert_close(windowed[8:16], second[4:12])
    assert not torch.allclose(windowed, whole[0])


def test_layer_pooling(zoo, embedder):
    """pooling="layer": per model [num_layers, latent_dim], each row the mean latent of one layer's
    tokens; every input route and batching agrees, and the count-weighted layer means give "mean"."""
    weights = zoo.weights("test")
    tok = embedder.feature_extractor
    layer = tok.layouts[0].positions[:, 1]
    num_layers = int(layer.max()) + 1
    model = zoo.build_model(weights[0])
    layers = embedder(model, pooling="layer")
    assert layers.shape == (num_layers, embedder.model.config.latent_dim)
    full = embedder(model, pooling="full")
    torch.testing.assert_close(layers, torch.stack([full[layer == i].mean(0) for i in range(num_layers)]))
    counts = torch.bincount(layer, minlength=num_layers).float()
    torch.testing.assert_close((layers * counts[:, None]).sum(0) / counts.sum(), embedder(model))
    expected = embed_flat(embedder.model, tok, weights, "layer").reshape(len(weights), num_layers, -1)
    torch.testing.assert_close(torch.stack(embedder(list(weights), pooling="layer", batch_size=3)), expected)
    torch.testing.assert_close(torch.stack(embedder(zoo.dataset["test"], pooling="layer", batch_size=4)), expected)
    with pytest.raises(ValueError, match="pooling must be one of"):
        embedder(model, pooling="max")


def test_embedding_refuses_other_families_and_dataset_dicts(zoo, embedder):
    before = len(embedder.feature_extractor.layouts)
    with pytest.raises(ValueError, match="cannot encode this model.*checkpoint trained on a zoo of this architecture"):
        embedder(torch.nn.Linear(3, 4))
    assert len(embedder.feature_extractor.layouts) == before
    with pytest.raises(ValueError, match="length 5 match no architecture"):
        embedder(torch.zeros(5))
    with pytest.raises(ValueError, match="pass one split"):
        embedder(zoo.dataset)
    with pytest.raises(ValueError, match="unknown options \\['poolng'\\]"):
        embedder(torch.zeros(5), poolng="full")


def test_property_prediction_returns_zoo_columns(zoo, checkpoint, embedder):
    pipe = pipeline("weight-property-prediction", model=str(checkpoint))
    weights = zoo.weights("test")
    out = pipe(zoo.build_model(weights[0]))
    assert set(out) == {"test_acc", "epoch"}
    expected = ProbeSet.load(checkpoint, "sane").predict(embed_flat(embedder.model, embedder.feature_extractor, weights))
    assert out["test_acc"] == pytest.approx(expected["test_acc"][0])
    rows = pipe(zoo.dataset["test"], properties=["epoch"])
    assert [r["epoch"] for r in rows] == pytest.approx(expected["epoch"])
    with pytest.raises(ValueError, match="no probe for property 'lr'.*hyperrep probe fit"):
        pipe(zoo.build_model(weights[0]), properties=["lr"])


def test_property_prediction_without_probes_names_the_fix(zoo, checkpoint, tmp_path):
    SaneModel.from_pretrained(checkpoint).save_pretrained(tmp_path)
    WeightTokenizer.from_pretrained(checkpoint).save_pretrained(tmp_path)
    pipe = pipeline("weight-property-prediction", model=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hyperrep probe fit"):
        pipe(zoo.build_model(zoo.weights("test")[0]))
    gen = pipeline("weight-generation", model=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hyperrep sample .*--prepare"):
        gen(num_samples=1)


def test_generation_gives_working_models_reproducibly(zoo, checkpoint):
    pipe = pipeline("weight-generation", model=str(checkpoint))
    samples = pipe(num_samples=3, method="kde30", seed=0)
    assert len(samples) == 3
    x = torch.randn(2, 1, 8, 8)
    for s in samples:
        assert type(s["model"]) is type(zoo.build_model(zoo.weights("train")[0]))
        assert s["model"](x).shape == (2, 10)
        for k, v in s["model"].state_dict().items():
            assert torch.equal(s["state_dict"][k], v)
    again = pipe(num_samples=3, method="kde30", seed=0)
    other = pipe(num_samples=3, method="kde30", seed=1)
    same = ModelGenerator.from_pretrained(checkpoint, device=pipe.device).generate(3, "kde30", seed=0)
    for a, b, c in zip(samples, again, same):
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        assert all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])
    assert not torch.equal(samples[0]["state_dict"]["0.weight"], other[0]["state_dict"]["0.weight"])
    with pytest.raises(ValueError, match="positive integer"):
        pipe(num_samples=0)


def test_decoding_inverts_the_tokenizer_standardisation(checkpoint):
    gen = ModelGenerator.from_pretrained(checkpoint)
    latents = gen.anchors.latents[:2]
    positions = gen.tokenizer.layouts[0].positions.expand(2, -1, -1)
    tokens = decode(gen.model, latents, positions)
    raw = gen.tokenizer.decode_flat(tokens, standardized=False)
    layout = gen.tokenizer.layouts[0]
    flat = gen.decode(latents)
    # a weight of layer 0: the soft clip c * asinh(z / c) undone, then z * sigma_0 + mu_0
    z = layout.clip * torch.sinh(raw[:, 0].double() / layout.clip)
    torch.testing.assert_close(flat[:, 0].double(), z * layout.std[0] + layout.mean[0], rtol=1e-5, atol=1e-6)


def test_sub_boot_and_neighbours(zoo, checkpoint):
    pipe = pipeline("weight-generation", model=str(checkpoint))
    sub = pipe(num_samples=2, method="sub", num_draws=4, seed=0)
    scores = [s["score"] for s in sub]
    assert scores == sorted(scores, reverse=True)
    task = pipe.generator.task
    acc = evaluate_accuracy([s["model"] for s in sub], task, "validation")
    assert acc.tolist() == pytest.approx(scores)
    assert len(pipe(num_samples=2, method="boot", num_draws=3, rounds=2)) == 2
    prompt = zoo.build_model(zoo.weights("test")[0])
    near = pipe(prompt, num_samples=2, method="neighbours", spread=0.01)
    far = pipe(prompt, num_samples=2, method="neighbours", spread=1.0)
    prompt_latents = pipe.generator.prompt_latents([prompt])[0]
    assert (near[0]["latents"] - prompt_latents).norm() < (far[0]["latents"] - prompt_latents).norm()
    with pytest.raises(ValueError, match="pass prompts"):
        pipe(num_samples=1, method="neighbours")


def test_anchors_are_the_last_epoch_scored_by_validation_accuracy(zoo, checkpoint):
    anchors = SamplingAnchors.load(checkpoint)
    meta = zoo.metadata("train")
    last = meta[meta.epoch == meta.epoch.max()]
    assert anchors.info["epochs"] == [int(meta.epoch.max())]
    assert anchors.scores.tolist() == pytest.approx(last.val_acc.tolist())
    assert anchors.latents.shape[1:] == (44, 16)
    assert anchors.info["architecture"] == zoo.architecture


def test_result_tables(zoo, checkpoint):
    rows = probe_table(zoo, checkpoint, properties=["test_acc", "epoch"], bootstrap=20)
    assert {(r["features"], r["property"]) for r in rows} == {(f, p) for f in ("sane", "stats", "stats-gbt", "weights") for p in ("test_acc", "epoch")}
    value = {(r["features"], r["property"]): r["value"] for r in rows}
    for r in rows:  # intervals over resampled test models; paired differences to s(W)
        assert r["ci"][0] <= r["ci"][1]
        if r["features"] == "stats":
            assert "vs_stats" not in r
        else:
            assert r["vs_stats"] == pytest.approx(r["value"] - value["stats", r["property"]])
            assert r["vs_stats_ci"][0] <= r["vs_stats_ci"][1]
    stats_epoch = next(r for r in rows if r["features"] == "stats" and r["property"] == "epoch")
    assert stats_epoch["value"] > 0.5  # s(W) tells epoch 0 from epoch 1 easily, even on this tiny zoo
    gen_rows = generation_table(checkpoint, zoo, methods=("kde30",), num_samples=2, epochs=(0, 1), batch_size=50)
    assert {(r["source"], r["epoch"]) for r in gen_rows} == {(s, e) for s in ("kde30", "scratch", "zoo") for e in (0, 1)}
    assert all(0 <= r["mean_acc"] <= 1 and r["task"] == "digits" for r in gen_rows)
    with pytest.raises(ValueError, match="transfer to a task of the same input shape"):
        generation_table(checkpoint, zoo, task="mnist-5k", num_samples=1, epochs=(0,))
    table = format_table(gen_rows)
    assert table.splitlines()[0] == "| source | task | epoch | mean_acc | std_acc | num_models |"


def test_cli_embed_probe_sample(zoo, checkpoint, tmp_path, capsys):
    out = tmp_path / "emb.safetensors"
    assert cli(["embed", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--split", "test", "--out", str(out)]) == 0
    emb = load_file(out)
    assert emb["embeddings"].shape == (len(zoo.dataset["test"]), 16) and len(emb["model_id"]) == len(zoo.dataset["test"])

    assert cli(["probe", "fit", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "stats", "--properties", "epoch"]) == 0
    assert cli(["probe", "eval", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "sane", "stats",
                "--bootstrap", "10", "--json", str(tmp_path / "t.json")]) == 0
    rows = {(r["features"], r["property"]): r for r in json.loads((tmp_path / "t.json").read_text())}
    assert set(rows) == {("sane", "test_acc"), ("sane", "epoch"), ("stats", "epoch")}
    assert rows["sane", "epoch"]["vs_stats"] == pytest.approx(rows["sane", "epoch"]["value"] - rows["stats", "epoch"]["value"])
    assert "vs_stats" not in rows["sane", "test_acc"] and len(rows["sane", "test_acc"]["ci"]) == 2
    assert cli(["probe", "eval", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--bootstrap", "-1"]) == 2
    assert "--bootstrap must be >= 0" in capsys.readouterr().err
    assert cli(["probe", "predict", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--out", str(tmp_path / "p.json")]) == 0
    first = json.loads((tmp_path / "p.json").read_text())[0]
    assert set(first) == {"model_id", "epoch", "predicted"} and set(first["predicted"]) == {"test_acc", "epoch"}
    assert first["epoch"] == zoo.metadata("test", ["epoch"])["epoch"].iloc[0]  # the row's, not the predicted one

    samples = tmp_path / "samples"
    assert cli(["sample", "--checkpoint", str(checkpoint), "--num-samples", "2", "--seed", "3", "--out", str(samples)]) == 0
    meta = json.loads((samples / "samples.json").read_text())
    assert meta["files"] == ["sample-000.safetensors", "sample-001.safetensors"]
    model = zoo.build_model(zoo.weights("test")[0])
    model.load_state_dict(load_file(samples / "sample-000.safetensors"))
    # --bandwidth-scale 0: the KDE draws are the best anchors themselves, decoded
    exact = tmp_path / "exact"
    assert cli(["sample", "--checkpoint", str(checkpoint), "--num-samples", "1", "--bandwidth-scale", "0", "--out", str(exact)]) == 0
    gen = ModelGenerator.from_pretrained(checkpoint)
    flat = gen.layout.flatten(load_file(exact / "sample-000.safetensors"))
    decoded_anchors = gen.decode(gen.anchors.latents)
    assert (decoded_anchors - flat).abs().amax(1).min() < 1e-5

    capsys.readouterr()
    assert cli(["sample", "--checkpoint", str(checkpoint), "--num-samples", "0"]) == 2
    assert "--num-samples must be positive" in capsys.readouterr().err
    assert cli(["probe", "predict", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--properties", "lr"]) == 2
    assert "no probe for property 'lr'" in capsys.readouterr().err
    embed = ["embed", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--out", str(tmp_path / "e.safetensors")]
    assert cli([*embed, "--device", "gpu0"]) == 2
    assert "--device 'gpu0' is not a torch device; use cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli(["probe", "eval", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--device", "cuda"]) == 2
        assert "no CUDA GPU is visible on this machine; use --device cpu" in capsys.readouterr().err
    assert cli([*embed, "--device", "cpu"]) == 0
    torch.testing.assert_close(load_file(tmp_path / "e.safetensors")["embeddings"], emb["embeddings"])


def test_pipelines_load_probes_and_anchors_from_the_hub(zoo, checkpoint, hub_repo_id):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=str(checkpoint))
    model = zoo.build_model(zoo.weights("test")[0])
    local = pipeline("weight-property-prediction", model=str(checkpoint))(model)
    assert pipeline("weight-property-prediction", model=hub_repo_id)(model) == pytest.approx(local)
    from_hub = pipeline("weight-generation", model=hub_repo_id)(num_samples=1, seed=4)[0]["state_dict"]
    from_folder = pipeline("weight-generation", model=str(checkpoint))(num_samples=1, seed=4)[0]["state_dict"]
    assert all(torch.equal(from_hub[k], from_folder[k]) for k in from_folder)


def test_anchors_of_a_hyperparameter_zoo_share_the_best_models_activation(zoo, checkpoint, tmp_path, monkeypatch):
    meta = zoo.metadata("train").copy()
    meta["activation"] = ["relu" if i % 2 else "tanh" for i in range(len(meta))]
    monkeypatch.setattr(zoo, "metadata", lambda split="train", columns=None: meta if columns is None else meta[list(columns)])
    anchors = prepare_sampling(checkpoint, zoo, save_to=tmp_path, progress=False)
    last = meta[meta.epoch == meta.epoch.max()]
    best = last.loc[last.val_acc.idxmax(), "activation"]
    assert anchors.info["architecture_kwargs"]["activation"] == best
    assert sorted(anchors.scores.tolist()) == pytest.approx(sorted(last[last.activation == best].val_acc.tolist()))
    sample = ModelGenerator(*load_checkpoint(checkpoint), anchors).generate(1)[0]["model"]
    assert any(type(m).__name__ == {"relu": "ReLU", "tanh": "Tanh"}[best] for m in sample.modules())


def test_zoo_models_are_rebuilt_with_their_own_activation(zoo, monkeypatch):
    from hyperrep_hf.downstream.evaluation import zoo_models

    meta = zoo.metadata("test").copy()
    meta["activation"] = ["relu" if i % 2 else "tanh" for i in range(len(meta))]
    monkeypatch.setattr(zoo, "metadata", lambda split="test", columns=None: meta if columns is None else meta[list(columns)])
    last = meta[meta.epoch == meta.epoch.max()]
    models = zoo_models(zoo, len(last))
    kinds = [{type(m).__name__ for m in model.modules()} & {"ReLU", "Tanh"} for model in models]
    assert kinds == [{"ReLU"} if a == "relu" else {"Tanh"} for a in last.activation]


@pytest.fixture(scope="module")
def spec_checkpoint(zoo, checkpoint, tmp_path_factory):
    """The checkpoint with the zoo architecture's permutation spec stored in its tokenizer (as the
    trainer stores it) and probes fitted with the default, permutation-averaged, embeddings."""
    import shutil

    from hyperrep_hf.weightspace import permutation_spec

    folder = tmp_path_factory.mktemp("spec_checkpoint")
    shutil.copytree(checkpoint, folder, dirs_exist_ok=True)
    model, tok = load_checkpoint(folder)
    tok.set_permutation_spec(permutation_spec(zoo.build_model(zoo.weights("train")[0])))
    tok.save_pretrained(folder)
    fit_probes(zoo, "sane", folder, model, tok, ["test_acc", "epoch"]).save(folder)
    return folder


def test_permutation_averaged_embeddings(zoo, spec_checkpoint):
    from hyperrep_hf.weightspace import random_permutation

    embedder = pipeline("weight-embedding", model=str(spec_checkpoint))
    model, tok = embedder.model, embedder.feature_extractor
    weights = zoo.weights("test")
    expected = embed_flat(model, tok, weights, permutations=3)
    assert not torch.allclose(expected, embed_flat(model, tok, weights))
    # the same 3 permutations for every model, whatever the batching or the input route
    torch.testing.assert_close(torch.stack(embedder(list(weights), batch_size=2, permutations=3)), expected)
    torch.testing.assert_close(torch.stack(embedder(zoo.dataset["test"], batch_size=3, permutations=3)), expected)
    torch.testing.assert_close(embedder(zoo.build_model(weights[1]), permutations=3), expected[1])
    # averaging brings a model and a function-equal permutation of it together
    spec = tok.permutation_spec()
    twin = random_permutation(weights[:1], spec, layout=zoo.layout, generator=torch.Generator().manual_seed(1))
    pair = torch.cat([weights[:1], twin])
    plain, averaged = embed_flat(model, tok, pair), embed_flat(model, tok, pair, permutations=32)
    assert (averaged[0] - averaged[1]).norm() < 0.5 * (plain[0] - plain[1]).norm()
    # "layer" pooling averages over the same permutations (its count-weighted mean is the "mean")
    layers = embed_flat(model, tok, weights, "layer", permutations=3).reshape(len(weights), -1, model.config.latent_dim)
    torch.testing.assert_close(torch.stack(embedder(list(weights), pooling="layer", batch_size=2, permutations=3)), layers)
    torch.testing.assert_close(torch.stack(embedder(zoo.dataset["test"], pooling="layer", permutations=3)), layers)
    counts = torch.bincount(tok.layouts[0].positions[:, 1]).float()
    torch.testing.assert_close((layers * counts[:, None]).sum(1) / counts.sum(), expected)
    with pytest.raises(ValueError, match="need pooling='mean' or 'layer'"):
        embedder(weights[0], pooling="full", permutations=2)
    with pytest.raises(ValueError, match="integer >= 0"):
        embed_flat(model, tok, weights, permutations=-1)


def test_probes_average_over_permutations_by_default(zoo, spec_checkpoint, checkpoint):
    from hyperrep_hf.downstream.evaluation import PROBE_PERMUTATIONS

    probes = ProbeSet.load(spec_checkpoint, "sane")
    assert probes.info["permutations"] == PROBE_PERMUTATIONS
    assert ProbeSet.load(checkpoint, "sane").info["permutations"] == 0  # no spec stored: plain embeddings
    pipe = pipeline("weight-property-prediction", model=str(spec_checkpoint))
    weights = zoo.weights("test")
    expected = probes.predict(embed_flat(pipe.model, pipe.feature_extractor, weights, permutations=PROBE_PERMUTATIONS))
    assert [r["test_acc"] for r in pipe(list(weights), batch_size=4)] == pytest.approx(expected["test_acc"])
    assert [r["epoch"] for r in pipe(zoo.dataset["test"])] == pytest.approx(expected["epoch"])
    with pytest.raises(ValueError, match="fix the pooling and permutations"):
        pipe(weights[0], permutations=2)
    # a tokenizer without the spec names the fix
    plain = pipeline("weight-embedding", model=str(checkpoint))
    with pytest.raises(ValueError, match="stores no permutation spec.*set_permutation_spec"):
        plain(weights[0], permutations=2)


def test_cli_permutations(zoo, spec_checkpoint, tmp_path):
    out = tmp_path / "emb.safetensors"
    assert cli(["embed", "--checkpoint", str(spec_checkpoint), "--zoo", str(zoo.path), "--permutations", "3", "--out", str(out)]) == 0
    model, tok = load_checkpoint(spec_checkpoint)
    torch.testing.assert_close(load_file(out)["embeddings"], embed_flat(model, tok, zoo.weights("test"), permutations=3))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in spec_checkpoint.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    assert cli(["probe", "fit", "--checkpoint", str(folder), "--zoo", str(zoo.path), "--properties", "epoch", "--permutations", "2",
                "--pooling", "layer"]) == 0
    probes = ProbeSet.load(folder, "sane")
    assert probes.info["permutations"] == 2 and probes.info["pooling"] == "layer"
    assert cli(["probe", "eval", "--checkpoint", str(folder), "--zoo", str(zoo.path), "--json", str(tmp_path / "t.json")]) == 0
    features = embed_flat(model, tok, zoo.weights("test"), "layer", permutations=2)
    expected = probes.evaluate(features, {"epoch": zoo.metadata("test", ["epoch"])["epoch"].tolist()})
    assert json.loads((tmp_path / "t.json").read_text())[0]["value"] == pytest.approx(expected["epoch"]["r2"])
    # the property-prediction pipeline embeds the way the probes were fitted
    pipe = pipeline("weight-property-prediction", model=str(folder))
    assert [r["epoch"] for r in pipe(zoo.dataset["test"])] == pytest.approx(probes.predict(features)["epoch"])
    assert pipe(zoo.weights("test")[1])["epoch"] == pytest.approx(probes.predict(features[1:2])["epoch"][0])
    assert cli(["embed", "--checkpoint", str(folder), "--zoo", str(zoo.path), "--pooling", "layer", "--out", str(out)]) == 0
    assert load_file(out)["embeddings"].shape == (len(features), int(tok.layouts[0].positions[:, 1].max()) + 1,
                                                  model.config.latent_dim)


def test_a_split_with_a_diverged_checkpoint_embeds_predicts_and_is_counted(zoo, checkpoint, tmp_path, capsys):
    import shutil

    from test_real_zoo_data import _corrupt_shard

    real = tmp_path / "real"
    shutil.copytree(zoo.path, real)
    _corrupt_shard(sorted((real / "data").glob("test-*.parquet"))[0], {0: float("nan")}, [])
    from hyperrep_hf.zoo import load_zoo

    test = load_zoo(real).dataset["test"]
    embed = pipeline("weight-embedding", model=str(checkpoint), device="cpu")
    embeddings = embed(test)
    assert len(embeddings) == len(test) and torch.isnan(embeddings[0]).all()
    assert torch.allclose(torch.stack(embeddings[1:]), torch.stack(embed(zoo.dataset["test"])[1:]))
    predictions = pipeline("weight-property-prediction", model=str(checkpoint), device="cpu")(test)
    assert predictions[0] == {"test_acc": None, "epoch": None} and None not in predictions[1].values()
    assert cli(["embed", "--checkpoint", str(checkpoint), "--zoo", str(real), "--out", str(tmp_path / "e.safetensors")]) == 0
    assert f"left out 1 of {len(test)} rows of 'test': non-finite weights" in capsys.readouterr().out
    assert len(load_file(tmp_path / "e.safetensors")["embeddings"]) == len(test) - 1
    assert cli(["probe", "predict", "--checkpoint", str(checkpoint), "--zoo", str(real), "--out", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == len(test) - 1
