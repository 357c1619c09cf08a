"""GAN and latent-diffusion samplers (downstream.generative): they learn a toy anchor distribution,
are seeded and reproducible, are saved / loaded / pushed with a checkpoint, and work in the
pipeline, SUB, the CLI and generation_table on a tiny random SANE (mechanics, not quality)."""

import json
import re

import pytest
import torch
from transformers import pipeline

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.cli import main as cli
from hyperrep_hf.downstream.evaluation import generation_table
from hyperrep_hf.downstream.generation import (
    BANDWIDTH_CHOICE_SAMPLES,
    ModelGenerator,
    SamplingAnchors,
    nearest_anchor_distance,
    prepare_sampling,
    train_generative_sampler,
)
from hyperrep_hf.downstream.generative import (
    LatentBasis,
    load_sampler,
    train_gan_steps,
    train_sampler,
)
from hyperrep_hf.downstream.samplers import KDESampler, best_fraction, parse_method, sub_sample
from hyperrep_hf.zoo import build_zoo


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def mixture():
    """512 anchors [512, 2, 2] from a two-component Gaussian mixture in 4 dimensions (modes +-2 on
    the first dimension, a random shared covariance)."""
    g = _gen(0)
    mix = torch.randn(4, 4, generator=g) * 0.5
    modes = torch.zeros(2, 4)
    modes[0, 0], modes[1, 0] = 2.0, -2.0
    x = modes[torch.randint(0, 2, (512,), generator=g)] + torch.randn(512, 4, generator=g) @ mix
    return x.reshape(512, 2, 2)


@pytest.mark.parametrize("kind, settings", [("gan", {"steps": 600, "hidden": 64, "lr": 1e-3}),
                                            ("diffusion", {"steps": 500, "batch_size": 128, "hidden": 128}),
                                            # predicting the clean sample under-spreads early: three times the steps
                                            ("diffusion", {"steps": 1500, "batch_size": 128, "hidden": 128,
                                                           "prediction": "sample"})])
def test_samplers_learn_a_gaussian_mixture(mixture, kind, settings):
    torch.set_num_threads(1)
    sampler = train_sampler(mixture, kind, settings, seed=0)
    draws = sampler.sample(2000, _gen(1))
    assert draws.shape == (2000, 2, 2)
    flat, data = draws.flatten(1), mixture.flatten(1)
    std = data.std(0)
    assert ((flat.mean(0) - data.mean(0)).abs() / std).max() < 0.2
    cov, true = torch.cov(flat.T), torch.cov(data.T)
    assert (cov - true).norm() / true.norm() < 0.25
    # both modes, in about the data's proportion (a collapsed sampler would keep one)
    share, true_share = (flat[:, 0] > 0).float().mean(), (data[:, 0] > 0).float().mean()
    assert abs(share - true_share) < 0.1
    # same generator state, same draws; another seed, other draws
    torch.testing.assert_close(sampler.sample(5, _gen(3)), sampler.sample(5, _gen(3)), rtol=0, atol=0)
    assert not torch.equal(sampler.sample(5, _gen(3)), sampler.sample(5, _gen(4)))
    if kind == "diffusion" and "prediction" not in settings:  # with the ancestral noise (eta 1) as well
        sampler.settings["eta"] = 1.0
        noisy = sampler.sample(2000, _gen(1)).flatten(1)
        assert ((noisy.mean(0) - data.mean(0)).abs() / std).max() < 0.2
        assert (torch.cov(noisy.T) - true).norm() / true.norm() < 0.25
        assert abs((noisy[:, 0] > 0).float().mean() - true_share) < 0.1
        # its draws depend on more than their initial noise, and stay reproducible
        assert not torch.equal(noisy[:5], flat[:5])
        torch.testing.assert_close(sampler.sample(5, _gen(3)), sampler.sample(5, _gen(3)), rtol=0, atol=0)
        sampler.settings["eta"] = 0.0
    # the noise scale shrinks the draws towards the densest region
    sampler.settings["noise_scale"] = 0.3
    narrow = sampler.basis.encode(sampler.sample(2000, _gen(1)))
    assert narrow.std(0).mean() < 0.7 * sampler.basis.encode(draws).std(0).mean()


def test_gan_snapshots_of_one_run_are_the_gans_trained_that_long(mixture):
    settings = {"hidden": 16, "lr": 1e-3}
    snapshots = train_gan_steps(mixture[:64], [40, 15, 25], settings, seed=3, config={"fraction": 0.5})
    assert sorted(snapshots) == [15, 25, 40]
    for n, sampler in snapshots.items():
        alone = train_sampler(mixture[:64], "gan", {**settings, "steps": n}, seed=3, config={"fraction": 0.5})
        assert sampler.config == alone.config and sampler.settings["steps"] == n
        assert torch.equal(sampler.sample(6, _gen(0)), alone.sample(6, _gen(0)))
    assert not torch.equal(snapshots[15].sample(6, _gen(0)), snapshots[40].sample(6, _gen(0)))
    snapshots[15].settings["noise_scale"] = 0.5  # each snapshot's settings are its own
    assert snapshots[25].settings["noise_scale"] == 1.0
    with pytest.raises(ValueError, match="steps must be positive integers"):
        train_gan_steps(mixture[:64], [0, 10])


@pytest.mark.parametrize("kind", ["gan", "diffusion"])
def test_training_is_seeded_and_a_saved_sampler_draws_the_same(mixture, kind, tmp_path):
    settings = {"steps": 30, "hidden": 16}
    a = train_sampler(mixture[:64], kind, settings, seed=5)
    b = train_sampler(mixture[:64], kind, settings, seed=5)
    c = train_sampler(mixture[:64], kind, settings, seed=6)
    assert torch.equal(a.sample(4, _gen(0)), b.sample(4, _gen(0)))
    assert not torch.equal(a.sample(4, _gen(0)), c.sample(4, _gen(0)))
    a.save(tmp_path)
    assert {p.name for p in (tmp_path / "sampling").iterdir()} == {f"{kind}.json", f"{kind}.safetensors"}
    loaded = load_sampler(tmp_path, kind, "train it")
    assert torch.equal(loaded.sample(4, _gen(0)), a.sample(4, _gen(0)))
    assert loaded.config["settings"] == a.config["settings"]
    if kind == "diffusion":  # a file from before the prediction setting: its default, the noise predictor
        config = json.loads((tmp_path / "sampling" / "diffusion.json").read_text())
        del config["settings"]["prediction"]
        (tmp_path / "sampling" / "diffusion.json").write_text(json.dumps(config))
        older = load_sampler(tmp_path, kind, "train it")
        assert older.settings["prediction"] == "epsilon" and torch.equal(older.sample(4, _gen(0)), a.sample(4, _gen(0)))
    # SUB over a generative sampler: the best of the draws by a score
    best, scores = sub_sample(loaded, lambda z: z.flatten(1)[:, 0], 3, 20, _gen(2))
    assert best.shape == (3, 2, 2) and scores.tolist() == sorted(scores.tolist(), reverse=True)
    with pytest.raises(FileNotFoundError, match="train it"):
        load_sampler(tmp_path / "none", kind, "train it")


def test_basis_and_settings_errors(mixture):
    basis = LatentBasis.fit(mixture[:3])
    assert basis.rank == 2  # 3 anchors span 2 directions around their mean
    torch.testing.assert_close(basis.decode(basis.encode(mixture[:3])), mixture[:3], atol=1e-5, rtol=1e-5)
    assert LatentBasis.fit(mixture[:3], rank=1).rank == 1
    with pytest.raises(ValueError, match="at least 2 anchors"):
        train_sampler(mixture[:1], "gan")
    with pytest.raises(ValueError, match="identical"):
        train_sampler(torch.ones(4, 3), "diffusion")
    with pytest.raises(ValueError, match="unknown gan settings"):
        train_sampler(mixture, "gan", {"temperature": 2})
    with pytest.raises(ValueError, match="unknown generative sampler 'vae'"):
        train_sampler(mixture, "vae")
    with pytest.raises(ValueError, match="positive integer"):
        train_sampler(mixture, "diffusion", {"steps": 0})
    for bad in (-0.5, 2, True):
        with pytest.raises(ValueError, match=r"diffusion setting eta must be a number in \[0, 1\]"):
            train_sampler(mixture, "diffusion", {"eta": bad})
    with pytest.raises(ValueError, match=r"prediction must be one of \['epsilon', 'sample'\] \(the noise or the clean"):
        train_sampler(mixture, "diffusion", {"prediction": "x0"})
    with pytest.raises(ValueError, match="unknown sampling method 'ganz'"):
        parse_method("ganz")
    assert parse_method("sub-diffusion") == ("sub-diffusion", 0.3)


# ------------------------------------------------------------------- a checkpoint, pipeline, CLI
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo("digits-seed", tmp_path_factory.mktemp("zoo"), num_models=8, epochs=1, progress=False)


@pytest.fixture(scope="module")
def checkpoint(zoo, tmp_path_factory):
    """A random tiny SANE with anchors (fixed bandwidth scale) and GAN + diffusion samplers trained
    on every anchor, their settings chosen on validation over a two-value grid."""
    folder = tmp_path_factory.mktemp("checkpoint")
    tok = WeightTokenizer()
    tok.layout_of(zoo.build_model(zoo.weights("train")[0]))
    tok.fit_standardization(zoo.weights("train"))
    torch.manual_seed(0)
    model = SaneModel(SaneConfig.from_preset("tiny", token_size=tok.token_size, window_size=16)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    prepare_sampling(folder, zoo, model=model, tokenizer=tok, progress=False, bandwidth_scale=0.25)
    return folder


def test_untrained_sampler_is_refused_with_the_command(checkpoint):
    pipe = pipeline("weight-generation", model=str(checkpoint))
    with pytest.raises(ValueError, match=f"no trained gan sampler; .*hyperrep sample --checkpoint {checkpoint} --train-samplers gan"):
        pipe(num_samples=1, method="gan")
    with pytest.raises(ValueError, match="no trained diffusion sampler"):
        pipe(num_samples=1, method="sub-diffusion")
    with pytest.raises(ValueError, match="unknown sampling method 'gann'"):
        pipe(num_samples=1, method="gann")


def test_cli_trains_samplers_and_the_pipeline_samples_them(zoo, checkpoint, tmp_path, capsys, hub_repo_id):
    # 1. train both on every anchor (the tiny zoo's split has few), steps chosen on validation
    args = ["sample", "--checkpoint", str(checkpoint), "--train-samplers", "gan", "diffusion",
            "--sampler-fraction", "1", "--sampler-steps", "20", "60"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "gan:" in out and "diffusion:" in out and "chosen by validation accuracy" in out
    anchors = SamplingAnchors.load(checkpoint)
    assert anchors.info["generative"] == ["diffusion", "gan"] and set(anchors.samplers) == {"gan", "diffusion"}
    for kind, sampler in anchors.samplers.items():
        assert sampler.kind == kind
        trials = sampler.config["choice"]["trials"]
        grid = [(20, 0.5), (20, 1.0), (60, 0.5), (60, 1.0)]
        keys = ("steps", "noise_scale")
        if kind == "diffusion":  # a noise and a sample predictor, each with deterministic and noisy draws
            grid = [(n, p, scale, eta) for n in (20, 60) for p in ("epsilon", "sample") for scale in (0.5, 1.0)
                    for eta in (0.0, 1.0)]
            keys = ("steps", "prediction", "noise_scale", "eta")
        assert [tuple(t[k] for k in keys) for t in trials] == grid
        best = max(t["validation_accuracy"] for t in trials)
        chosen = next(t for t in reversed(trials) if t["validation_accuracy"] == best)
        assert tuple(sampler.settings[k] for k in keys) == tuple(chosen[k] for k in keys)
        assert sampler.config["fraction"] == 1.0 and sampler.config["num_anchors"] == len(anchors.scores)

    # 2. the pipeline samples with them, reproducibly; SUB over them keeps the best by validation accuracy
    pipe = pipeline("weight-generation", model=str(checkpoint))
    x = torch.randn(2, 1, 8, 8)
    for method in ("gan", "diffusion"):
        a, b = pipe(num_samples=2, method=method, seed=0), pipe(num_samples=2, method=method, seed=0)
        other = pipe(num_samples=2, method=method, seed=1)
        assert a[0]["model"](x).shape == (2, 10)
        assert all(torch.equal(a[i]["state_dict"][k], b[i]["state_dict"][k]) for i in range(2) for k in a[i]["state_dict"])
        assert not torch.equal(a[0]["latents"], other[0]["latents"])
        sub = pipe(num_samples=2, method=f"sub-{method}", num_draws=4, seed=0)
        assert [s["score"] for s in sub] == sorted((s["score"] for s in sub), reverse=True)
    with pytest.raises(ValueError, match=r"learnt from the best 100% of the anchors, not 30%.*--sampler-fraction 0.3"):
        pipe(num_samples=1, method="gan30")

    # 3. the CLI samples with them and writes the state_dicts
    assert cli(["sample", "--checkpoint", str(checkpoint), "--method", "diffusion", "--num-samples", "2",
                "--out", str(tmp_path / "s")]) == 0
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert meta["method"] == "diffusion" and meta["bandwidth_scale"] is None and len(meta["files"]) == 2

    # 4. generation_table compares them with the other sources
    rows = generation_table(checkpoint, zoo, methods=("gan", "diffusion", "kde30"), num_samples=1, epochs=(0,))
    assert {r["source"] for r in rows} == {"gan", "diffusion", "kde30", "scratch", "zoo"}

    # 5. pushed with the checkpoint and loaded from the Hub: the same draws
    from hyperrep_hf.hub import push_checkpoint

    push_checkpoint(checkpoint, hub_repo_id)
    remote = ModelGenerator.from_pretrained(hub_repo_id)
    assert set(remote.anchors.samplers) == {"gan", "diffusion"}
    local = ModelGenerator.from_pretrained(checkpoint)
    for method in ("gan", "diffusion"):
        assert torch.equal(remote.draw(3, method, seed=2)[0], local.draw(3, method, seed=2)[0])

    # 6. re-preparing the anchors drops the samplers trained on the old ones
    prepare_sampling(checkpoint, zoo, progress=False, bandwidth_scale=0.25)
    with pytest.raises(ValueError, match="no trained gan sampler"):
        ModelGenerator.from_pretrained(checkpoint).draw(1, "gan")


def test_a_diversity_floor_passes_over_samplers_that_copy_their_anchors(checkpoint, capsys):
    gen = ModelGenerator.from_pretrained(checkpoint)
    plain = train_generative_sampler(gen, "gan", fraction=1.0, steps=(5, 20), progress=False)
    assert plain.config["choice"]["diversity_floor"] is None
    kde = train_generative_sampler(gen, "gan", fraction=1.0, steps=(5, 20), progress=False, diversity="kde")
    trials, floor = kde.config["choice"]["trials"], kde.config["choice"]["diversity_floor"]
    best_anchors = best_fraction(gen.anchors.latents, gen.anchors.scores, 1.0)
    draws = KDESampler(best_anchors, "silverman", 0.25).sample(BANDWIDTH_CHOICE_SAMPLES, _gen(0))
    assert floor == pytest.approx(float(nearest_anchor_distance(gen, draws, 1.0).mean()), rel=1e-5)
    diverse = [t for t in trials if t["distance"] >= floor] or trials
    best = max(t["validation_accuracy"] for t in diverse)
    chosen = next(t for t in reversed(diverse) if t["validation_accuracy"] == best)
    assert (kde.settings["steps"], kde.settings["noise_scale"]) == (chosen["steps"], chosen["noise_scale"])
    # "2kde": twice KDE's distance, the same rule
    twice = train_generative_sampler(gen, "gan", fraction=1.0, steps=(5, 20), progress=False, diversity="2kde")
    assert twice.config["choice"]["diversity_floor"] == pytest.approx(2 * floor, rel=1e-5)
    # a floor no setting reaches leaves the choice to accuracy alone
    far = train_generative_sampler(gen, "gan", fraction=1.0, steps=(5, 20), progress=False, diversity=1e9)
    assert (far.settings["steps"], far.settings["noise_scale"]) == (plain.settings["steps"], plain.settings["noise_scale"])
    for bad in (-1.0, "-2kde", "0kde", True):
        with pytest.raises(ValueError, match=r"diversity floor \(--sampler-diversity\) must be 'kde', a multiple of it "
                                             r"such as '1.5kde', or a distance >= 0, got " + re.escape(repr(bad))):
            train_generative_sampler(gen, "gan", fraction=1.0, steps=(5,), progress=False, diversity=bad)
    capsys.readouterr()
    assert cli(["sample", "--checkpoint", str(checkpoint), "--train-samplers", "gan", "--sampler-diversity", "lots"]) != 0
    assert "or a distance >= 0, got 'lots'" in capsys.readouterr().err


def test_a_sampler_needs_two_anchors(checkpoint):
    gen = ModelGenerator.from_pretrained(checkpoint)
    # the novelty measure: decoded anchors are at distance 0, draws further out are further
    best = best_fraction(gen.anchors.latents, gen.anchors.scores, 1.0)
    assert nearest_anchor_distance(gen, best, 1.0).abs().max() < 1e-4
    noise = torch.randn(best[:1].shape, generator=_gen(0))
    near = nearest_anchor_distance(gen, best[:1] + 0.01 * noise, 1.0)
    far = nearest_anchor_distance(gen, best[:1] + noise, 1.0)
    assert 0 < near < far
    with pytest.raises(ValueError, match="learns from at least 2: raise --sampler-fraction"):
        train_generative_sampler(gen, "gan", fraction=0.01, steps=(5,))
    with pytest.raises(ValueError, match="unknown generative sampler"):
        train_generative_sampler(gen, "flow")
