"""Training SANE on a zoo: options, the two-view data pipeline, the loop, resume, bad input.

All tests share one tiny digits zoo (10 CNNs, 2 epochs) and train a SANE of a few thousand weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hyperrep_hf
from hyperrep_hf.training import (
    Augmentation,
    SaneTrainer,
    SaneTrainingArguments,
    TrainingDivergedError,
    ZooData,
    parse_epochs,
    parse_training_args,
    train_sane,
)
from hyperrep_hf.training.data import exploded_rows
from hyperrep_hf.training.trainer import epoch_batches
from hyperrep_hf.zoo import build_zoo, load_zoo

ROOT = Path(__file__).resolve().parents[1]
# A SANE small enough to train in seconds; window 16 < the zoo's 44 tokens, so windows are cut.
SMALL = dict(d_model=16, num_layers=1, num_heads=2, latent_dim=8, window_size=16, batch_size=4,
             eval_batch_size=16, progress=False, report_to=["tensorboard"])


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("zoo") / "digits"
    torch.set_num_threads(1)
    build_zoo("digits-seed", out, num_models=10, epochs=2, progress=False)
    return str(out)


def small_args(zoo_dir, out, **kw) -> SaneTrainingArguments:
    return SaneTrainingArguments(zoo=[zoo_dir], output_dir=str(out), **{**SMALL, **kw})


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ options


def test_options_come_from_a_yaml_file_and_flags_override_it(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("zoo: [zoos/a]\noutput_dir: runs/x\nepochs: 7\ngamma: 0.2\nzoo_epochs: 1-3\n")
    args = parse_training_args(["--config", str(config), "--epochs", "3", "--layer_loss_norm", "false",
                                "--zoo", "zoos/a", "zoos/b", "--token_size", "201"])
    assert (args.epochs, args.gamma, args.layer_loss_norm) == (3, 0.2, "none")  # false: the older spelling of none
    assert args.zoo == ["zoos/a", "zoos/b"] and args.token_size == 201 and args.output_dir == "runs/x"
    assert parse_epochs(args.zoo_epochs) == [1, 2, 3]
    assert parse_epochs("0,5-6") == [0, 5, 6] and parse_epochs(None) is None


@pytest.mark.parametrize("bad, message", [
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(zoo_epochs="late"), "zoo_epochs"),
    (dict(preset="huge"), "unknown preset"),
    (dict(mixed_precision="fp8"), "mixed_precision"),
    (dict(pct_start=1.5), "pct_start"),
])
def test_bad_options_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        SaneTrainingArguments(zoo=["z"], output_dir="o", **bad)
    with pytest.raises(ValueError, match="unknown training options"):
        SaneTrainingArguments.from_dict({"zoo": ["z"], "output_dir": "o", "learning_rat": 1e-3})


def test_recipe_published_sets_the_papers_choices_and_flags_given_win():
    ours = parse_training_args(["--zoo", "z", "--output_dir", "o"])
    assert (ours.recipe, ours.statistics, ours.soft_clip, ours.drop_exploded, ours.views, ours.align,
            ours.layer_loss_norm) == ("default", "median", 4.0, True, "permuted-both", False, "standardized")
    paper = parse_training_args(["--zoo", "z", "--output_dir", "o", "--recipe", "published"])
    assert (paper.statistics, paper.soft_clip, paper.tokenizer_soft_clip, paper.drop_exploded, paper.views, paper.align,
            paper.layer_loss_norm) == ("mean", "none", None, False, "stored-and-permuted", True, "raw")
    ablation = parse_training_args(["--zoo", "z", "--output_dir", "o", "--recipe", "published", "--soft_clip", "3",
                                    "--views", "stored-both", "--drop_exploded"])
    assert (ablation.soft_clip, ablation.views, ablation.drop_exploded, ablation.statistics) == (3.0, "stored-both", True, "mean")
    # a saved training_args.json reads back to the same run
    assert SaneTrainingArguments.from_dict(ablation.to_dict()).to_dict() == ablation.to_dict()
    # the older spelling of the views still reads (training_args.json of earlier runs)
    assert SaneTrainingArguments(zoo=["z"], output_dir="o", permute_views=False).views == "stored-both"


@pytest.mark.parametrize("bad, message", [
    (dict(align=True), "--align true with --views permuted-both .* throws the alignment away"),
    (dict(recipe="published", views="permuted-both"), "throws the alignment away"),
    (dict(views="both"), "views must be one of"),
    (dict(statistics="mode"), "statistics must be one of"),
    (dict(soft_clip="wide"), "soft_clip must be a positive number or 'none'"),
    (dict(soft_clip=-1.0), "soft_clip must be a positive number or 'none'"),
    (dict(layer_loss_norm="layer"), "layer_loss_norm must be one of"),
    (dict(recipe="sane"), "unknown recipe"),
    (dict(permute_views=True, views="stored-both"), "disagree"),
])
def test_method_options_out_of_range_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        SaneTrainingArguments(zoo=["z"], output_dir="o", **bad)


# ------------------------------------------------------------------------------------ data


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_follows_the_cpu(zoo_dir, tmp_path, monkeypatch, native_bf16, expected):
    """"auto" is bf16 on a CPU that multiplies bf16 in hardware (AVX512-BF16/AMX), fp32 elsewhere;
    on a GPU machine the GPU's precision, whatever the CPU."""
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: native_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    if torch.cuda.is_available():
        expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    trainer = SaneTrainer(small_args(zoo_dir, tmp_path))
    assert trainer.args.mixed_precision == "auto"
    assert trainer._accelerator().mixed_precision == expected


@pytest.mark.parametrize("capability, isa, native", [
    ("AVX512", None, True), ("AVX512", "avx512_core_amx", True), ("AVX2", None, False), ("AVX512", "AVX2", False),
    ("AVX512", "AVX512_CORE", False)])
def test_native_bf16_honours_the_isa_torch_may_use(monkeypatch, capability, isa, native):
    """bf16 counts as native only where torch may run the CPU's bf16 instructions: a process limited
    to AVX2 (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA, how a benchmark runs as on an older CPU) emulates it."""
    from hyperrep_hf.precision import cpu_has_native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert cpu_has_native_bf16() is native


def test_two_views_share_a_window_and_permuted_views_compute_the_same_function(zoo_dir):
    data = ZooData.from_zoos([zoo_dir])
    zoo = data.groups[0].zoo
    rows = torch.tensor([0, 3, 5])
    g = torch.Generator().manual_seed(0)
    batch = data.training_batch(rows, window_size=16, generator=g, augmentation=Augmentation(views="permuted-both"))
    assert batch.tokens.shape == (6, 16, data.tokenizer.token_size)
    # the same window for both views of a model
    assert torch.equal(batch.positions[:3], batch.positions[3:])
    # noise changes real values only; padding stays zero
    assert not torch.equal(batch.tokens, batch.targets)
    assert (batch.tokens[~batch.value_mask] == 0).all()

    # a whole-sequence window: each view decodes to a permuted model with the original's function
    whole = data.training_batch(rows, window_size=1000, generator=g, augmentation=Augmentation(views="permuted-both"))
    x = torch.randn(5, 1, 8, 8)
    for v in range(2):
        flat = data.tokenizer.decode_flat(whole.targets[v * 3:(v + 1) * 3])
        for i, row in enumerate(rows.tolist()):
            original = zoo.build_model(data.groups[0].splits["train"].weights[row])
            permuted = zoo.build_model(flat[i])
            assert not torch.allclose(flat[i], data.groups[0].splits["train"].weights[row])
            torch.testing.assert_close(permuted(x), original(x), atol=1e-5, rtol=1e-4)


def test_view_schemes_permute_as_named(zoo_dir):
    data = ZooData.from_zoos([zoo_dir])
    rows = torch.tensor([0, 3, 5])
    stored = data.tokenizer.tokenize_flat(data.groups[0].splits["train"].weights[rows])["tokens"]

    def views(scheme):
        batch = data.training_batch(rows, 1000, torch.Generator().manual_seed(0), Augmentation(views=scheme))
        return batch.targets[:3], batch.targets[3:]

    first, second = views("stored-both")
    assert torch.equal(first, stored) and torch.equal(second, stored)
    first, second = views("stored-and-permuted")
    assert torch.equal(first, stored) and not torch.equal(second, stored)
    first, second = views("permuted-both")
    assert not torch.equal(first, stored) and not torch.equal(second, stored) and not torch.equal(first, second)
    with pytest.raises(ValueError, match="views must be one of"):
        Augmentation(views="aligned")


def test_recipe_published_trains_and_the_card_and_args_name_it(zoo_dir, tmp_path):
    out = tmp_path / "published"
    train_sane(small_args(zoo_dir, out, recipe="published", epochs=1))
    saved = json.loads((out / "training_args.json").read_text())
    assert (saved["recipe"], saved["views"], saved["align"], saved["statistics"], saved["soft_clip"]) == (
        "published", "stored-and-permuted", True, "mean", "none")
    card = (out / "README.md").read_text()
    assert "--recipe published" in card and "Views: stored-and-permuted" in card and "normalisation raw" in card
    tok = hyperrep_hf.WeightTokenizer.from_pretrained(out)
    assert tok.statistics == "mean" and tok.soft_clip is None and tok.layouts[0].alignment is not None
    model = hyperrep_hf.SaneModel.from_pretrained(out)
    data = ZooData.from_zoos([zoo_dir], align=True, statistics="mean", soft_clip=None, drop_exploded=False)
    torch.testing.assert_close(model.layer_sigma[:data.num_layers], data.token_statistics("raw"))


def test_layer_loss_scales_standardized_and_raw(zoo_dir):
    """"raw" is the published LWLN: the std of layer l's raw training weights, in token units (divided
    by the standardisation scale s_l); "standardized" the std of the standardised tokens, about 1."""
    zoo = load_zoo(zoo_dir)
    data = ZooData.from_zoos([zoo])  # median statistics, soft clip 4
    tl = data.tokenizer.layouts[0]
    weights = data.groups[0].splits["train"].weights
    raw_std = []
    for spec in tl.layers:  # every value of the layer over all training models, from the state_dicts
        parts = [torch.stack([zoo.layout.unflatten(w)[name].flatten() for w in weights]).flatten()
                 for name in (spec.weight, spec.bias) if name]
        raw_std.append(torch.cat(parts).double().std(correction=0).item())
    raw_std = torch.tensor(raw_std, dtype=torch.float64)
    torch.testing.assert_close(data.token_statistics("raw").double(), raw_std / tl.std, rtol=1e-4, atol=0)
    standardized = data.token_statistics("standardized")
    assert ((standardized > 0.3) & (standardized < 2.0)).all()  # standardisation equalised the layers already
    assert not torch.allclose(standardized, data.token_statistics("raw"), rtol=1e-3)  # the soft clip bends them
    # without a clip the two agree; without standardisation "raw" is the raw weights' std itself
    linear = ZooData.from_zoos([zoo], soft_clip=None)
    torch.testing.assert_close(linear.token_statistics("standardized"), linear.token_statistics("raw"), rtol=1e-4, atol=0)
    unstandardized = ZooData.from_zoos([zoo], standardize=False)
    torch.testing.assert_close(unstandardized.token_statistics("raw").double(), raw_std, rtol=1e-4, atol=0)
    assert not torch.allclose(raw_std.float(), torch.ones_like(standardized), rtol=0.3)


def test_standardisation_is_fitted_on_the_train_split_only(zoo_dir):
    data = ZooData.from_zoos([zoo_dir])
    splits = data.groups[0].splits
    layout = data.tokenizer.layouts[0]

    def fitted(weights):
        tok = hyperrep_hf.WeightTokenizer(token_size=data.tokenizer.token_size)
        tok.layout_of(load_zoo(zoo_dir).build_model(weights[0]))
        return tok.fit_standardization(weights).layouts[0]

    on_train = fitted(splits["train"].weights)
    assert torch.equal(layout.mean, on_train.mean) and torch.equal(layout.std, on_train.std)
    on_all = fitted(torch.cat([splits[s].weights for s in ("train", "validation", "test")]))
    assert not torch.equal(layout.std, on_all.std)
    refit = ZooData.from_zoos([zoo_dir], epochs=[0])
    assert refit.tokenizer.to_dict()["layouts"] != data.tokenizer.to_dict()["layouts"]
    assert set(refit.metadata("train", "epoch")) == {0}


def test_zoos_of_one_architecture_share_one_standardisation_fitted_on_all_their_train_rows(zoo_dir, tmp_path):
    other = tmp_path / "other"
    build_zoo("digits-seed", other, num_models=4, epochs=1, progress=False)
    data = ZooData.from_zoos([zoo_dir, str(other)])
    assert len(data.tokenizer.layouts) == 1 and [g.layout_id for g in data.groups] == [0, 0]
    train = torch.cat([g.splits["train"].weights for g in data.groups])
    tok = hyperrep_hf.WeightTokenizer(token_size=data.tokenizer.token_size)
    tok.layout_of(load_zoo(zoo_dir).build_model(train[0]))
    both = tok.fit_standardization(train).layouts[0]
    layout = data.tokenizer.layouts[0]
    torch.testing.assert_close(layout.mean, both.mean)
    torch.testing.assert_close(layout.std, both.std)


def test_exploded_checkpoints_are_left_out_of_training_but_still_tokenize_bounded(zoo_dir, monkeypatch):
    zoo = load_zoo(zoo_dir)
    clean = ZooData.from_zoos([zoo])
    read = zoo.weights

    def with_exploded(split="train"):
        w = read(split).clone()
        if split == "train":
            w[:3] *= 1000.0  # three checkpoints whose weights exploded
        return w

    monkeypatch.setattr(zoo, "weights", with_exploded)
    data = ZooData.from_zoos([zoo])
    train = data.groups[0].splits["train"]
    assert train.exploded == data.num_exploded() == 3 and len(train) == len(clean.groups[0].splits["train"]) - 3
    assert torch.equal(train.weights, clean.groups[0].splits["train"].weights[3:])
    # the statistics keep the clean zoo's scale; an exploded model's tokens stay bounded by the soft clip
    torch.testing.assert_close(data.tokenizer.layer_std(), clean.tokenizer.layer_std(), rtol=0.2, atol=0)
    tokens = data.tokenizer.tokenize_flat(with_exploded()[:1])["tokens"]
    clip = data.tokenizer.soft_clip
    assert tokens.abs().max() < clip * math.asinh(1e4 / clip)
    assert exploded_rows(torch.zeros(0, 5)).shape == (0,)
    # --drop_exploded false keeps them in training
    kept = ZooData.from_zoos([zoo], drop_exploded=False)
    assert kept.num_exploded() == 0 and torch.equal(kept.groups[0].splits["train"].weights, with_exploded())


def test_validation_and_test_keep_exploded_checkpoints(zoo_dir, monkeypatch):
    """Only the train split is filtered: the held-out splits are scored whole, the threshold never
    comes from their rows."""
    zoo = load_zoo(zoo_dir)
    read = zoo.weights

    def with_exploded(split="train"):
        w = read(split).clone()
        if split != "train":
            w[:2] *= 1000.0
        return w

    monkeypatch.setattr(zoo, "weights", with_exploded)
    data = ZooData.from_zoos([zoo])
    for split in ("validation", "test"):
        assert torch.equal(data.groups[0].splits[split].weights, with_exploded(split))
        assert data.num_exploded(split) == 0


def test_align_aligns_every_checkpoint_and_the_saved_tokenizer_aligns_new_models(zoo_dir, tmp_path):
    from hyperrep_hf.weightspace import random_permutation

    plain = ZooData.from_zoos([zoo_dir])
    data = ZooData.from_zoos([zoo_dir], align=True)
    g, p = data.groups[0], plain.groups[0]
    reference = g.token_layout.alignment["reference"]
    for split in ("train", "validation", "test"):
        before, after = p.splits[split].weights, g.splits[split].weights
        # weight matching only permutes: each row keeps its multiset of values ...
        assert torch.equal(before.sort(1).values, after.sort(1).values)
        # ... and ends no farther from the reference than it started
        assert bool(((after - reference).norm(dim=1) <= (before - reference).norm(dim=1) + 1e-4).all())
    # alignment keeps each model's function
    meta = g.splits["train"].metadata
    rows = np.flatnonzero(meta["model_id"].to_numpy() == meta["model_id"].iloc[-1])
    model = load_zoo(zoo_dir).build_model(g.splits["train"].weights[rows[0]])
    unaligned = load_zoo(zoo_dir).build_model(p.splits["train"].weights[rows[0]])
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(model(x), unaligned(x), atol=1e-5)

    out = tmp_path / "aligned"
    train_sane(small_args(zoo_dir, out, align=True, views="stored-both", epochs=1))
    from hyperrep_hf import WeightTokenizer

    tok = WeightTokenizer.from_pretrained(out)
    assert torch.equal(tok.layouts[0].alignment["reference"], reference)
    shuffled = random_permutation(unaligned, generator=torch.Generator().manual_seed(3))
    flat = g.token_layout.weights.flatten(shuffled.state_dict())
    assert (tok.align_flat(flat[None])[0] - reference).norm() < (flat - reference).norm()


# ------------------------------------------------------------------------------------ training


def test_hyperrep_train_writes_a_loadable_model_tokenizer_metrics_and_card(zoo_dir, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoFeatureExtractor, AutoModel

    from hyperrep_hf.cards import check_model_card
    from hyperrep_hf.cli import main

    out = tmp_path / "run"
    flags = ["--zoo", zoo_dir, "--output_dir", str(out), "--preset", "tiny", "--epochs", "2", "--d_model", "16",
             "--num_layers", "1", "--num_heads", "2", "--latent_dim", "8", "--window_size", "16", "--batch_size", "4",
             "--logging_steps", "1", "--eval_at_start", "--progress", "false", "--report_to", "tensorboard"]
    assert main(["train", *flags]) == 0
    model = AutoModel.from_pretrained(out)
    tokenizer = AutoFeatureExtractor.from_pretrained(out)
    assert isinstance(model, hyperrep_hf.SaneModel) and isinstance(tokenizer, hyperrep_hf.WeightTokenizer)
    assert model.config.d_model == 16 and tokenizer.layouts[0].standardized
    # LWLN scales are set from the training tokens, not left at 1
    assert not torch.allclose(model.layer_sigma[:4], torch.ones(4))

    zoo = load_zoo(zoo_dir)
    enc = tokenizer(zoo.build_model(zoo.weights("test")[0]))
    assert model.embed(enc["tokens"], enc["positions"], enc["attention_mask"]).shape == (1, 8)
    # the zoo architecture's permutation spec travels with the tokenizer (permutation-averaged embeddings)
    from hyperrep_hf.weightspace import permutation_spec

    assert tokenizer.permutation_spec(0) == permutation_spec(zoo.build_model(zoo.weights("test")[0]))

    lines = read_metrics(out)
    train = [m for m in lines if m["type"] == "train"]
    evals = [m for m in lines if m["type"] == "eval"]
    assert [m["step"] for m in train] == list(range(1, len(train) + 1))
    assert all(math.isfinite(m["loss"]) and 0 <= m["data_share"] <= 1 and m["tokens_per_s"] > 0 for m in train)
    assert [m["epoch"] for m in evals] == [0, 1, 2]
    for key in ("val_reconstruction_loss", "val_reconstruction_r2", "probe_val_r2/test_acc", "probe_val_r2/epoch",
                "probe_val_r2/ggap"):
        assert all(math.isfinite(m[key]) for m in evals), key
    saved = json.loads((out / "training_args.json").read_text())
    assert saved["epochs"] == 2 and saved["zoo"] == [zoo_dir]
    lrs = [m["learning_rate"] for m in train]  # OneCycle: up to the peak, then cosine down
    assert max(lrs) <= 1e-3 and lrs[0] < max(lrs) and lrs[-1] < max(lrs) / 10
    card = ModelCard.load(out / "README.md")
    check_model_card(card)
    assert "R^2 test_acc" in card.content
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    assert len(list((out / "checkpoints").glob("step-*"))) == 2  # save_total_limit


def test_resume_after_an_interruption_repeats_the_uninterrupted_losses(zoo_dir, tmp_path):
    kw = dict(epochs=2, logging_steps=1, eval_every=5, gradient_accumulation_steps=2, dropout=0.1)
    # batches built in the main thread here, in a prefetch thread below: the same losses either way
    full = train_sane(small_args(zoo_dir, tmp_path / "full", prefetch_batches=0, **kw))
    steps = full.global_step
    assert steps >= 4

    cut = steps // 2 + 1  # mid-epoch, between optimizer steps
    first = train_sane(small_args(zoo_dir, tmp_path / "cut", stop_after_steps=cut, **kw))
    assert not first.finished and first.global_step == cut
    second = train_sane(small_args(zoo_dir, tmp_path / "cut", resume="last", **kw))
    assert second.finished and second.global_step == steps

    losses = lambda out: [(m["step"], m["loss"]) for m in read_metrics(out) if m["type"] == "train"]  # noqa: E731
    resumed, uninterrupted = losses(tmp_path / "cut"), losses(tmp_path / "full")
    assert [s for s, _ in resumed] == [s for s, _ in uninterrupted]
    torch.testing.assert_close(torch.tensor([v for _, v in resumed]), torch.tensor([v for _, v in uninterrupted]),
                               rtol=1e-5, atol=1e-6)
    a = hyperrep_hf.SaneModel.from_pretrained(tmp_path / "full")
    b = hyperrep_hf.SaneModel.from_pretrained(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)

    # a resume with options that change the computation is refused, naming them
    with pytest.raises(ValueError, match="d_model: 16 in the run, 32 now"):
        train_sane(small_args(zoo_dir, tmp_path / "cut", resume="last", **{**kw, "d_model": 32}))
    with pytest.raises(ValueError, match="already holds a training run"):
        train_sane(small_args(zoo_dir, tmp_path / "cut", **kw))


def test_overwrite_clears_the_old_run_so_resume_continues_the_new_one(zoo_dir, tmp_path):
    kw = dict(epochs=2, logging_steps=1, eval_every=5)
    out = tmp_path / "run"
    old = train_sane(small_args(zoo_dir, out, stop_after_steps=3, **kw))  # the old run: stopped at step 3
    assert (out / "checkpoints" / "step-0000003").is_dir()
    # a new run (another seed) over it, stopped after one step, then resumed
    first = train_sane(small_args(zoo_dir, out, seed=1, overwrite_output_dir=True, stop_after_steps=1, **kw))
    assert first.global_step == 1 and old.global_step == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001"]
    assert [m["step"] for m in read_metrics(out) if m["type"] == "train"] == [1]
    resumed = train_sane(small_args(zoo_dir, out, seed=1, resume="last", **kw))
    uninterrupted = train_sane(small_args(zoo_dir, tmp_path / "new", seed=1, **kw))
    assert resumed.finished and resumed.global_step == uninterrupted.global_step
    losses = lambda run: [(m["step"], m["loss"]) for m in read_metrics(run) if m["type"] == "train"]  # noqa: E731
    assert [s for s, _ in losses(out)] == [s for s, _ in losses(tmp_path / "new")]
    torch.testing.assert_close(torch.tensor([v for _, v in losses(out)]), torch.tensor([v for _, v in losses(tmp_path / "new")]),
                               rtol=1e-5, atol=1e-6)


def test_resume_with_another_number_of_processes_is_refused_naming_both(zoo_dir, tmp_path):
    out = tmp_path / "run"
    kw = dict(epochs=2, eval_every=5, gradient_accumulation_steps=2)
    train_sane(small_args(zoo_dir, out, stop_after_steps=1, **kw))
    state_file = out / "checkpoints" / "step-0000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1 and state["effective_batch"] == 8 and state["steps_per_epoch"] >= 1
    state_file.write_text(json.dumps({**state, "num_processes": 2}))  # as a run on 2 processes would have written it
    with pytest.raises(ValueError, match=r"run on 2 process\(es\), this run has 1.*16 models per optimizer step in "
                                         r"the run, 8 now"):
        train_sane(small_args(zoo_dir, out, resume="last", **kw))
    state_file.write_text(json.dumps({**state, "steps_per_epoch": state["steps_per_epoch"] + 1}))
    with pytest.raises(ValueError, match=rf"took {state['steps_per_epoch'] + 1} optimizer steps per epoch, this one "
                                         rf"would take {state['steps_per_epoch']}"):
        train_sane(small_args(zoo_dir, out, resume="last", **kw))


def test_a_checkpoint_killed_while_saving_is_never_resumed_and_the_marker_comes_last(zoo_dir, tmp_path):
    from hyperrep_hf.training.trainer import COMPLETE_NAME, is_trained

    class KilledWhileSaving(SaneTrainer):
        def _accelerator(self):
            acc = super()._accelerator()
            save_state, calls = acc.save_state, []

            def dies_on_the_second(path):
                calls.append(path)
                save_state(path)  # every file written, the folder not yet renamed
                if len(calls) == 2:
                    raise RuntimeError("killed")
            acc.save_state = dies_on_the_second
            return acc

    out = tmp_path / "run"
    kw = dict(epochs=3, eval_every=5)
    with pytest.raises(RuntimeError, match="killed"):
        train_sane(small_args(zoo_dir, out, **kw), trainer_class=KilledWhileSaving)
    done = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert len(done) == 1 and len(list((out / "checkpoints").glob(".tmp-step-*"))) == 1
    assert not is_trained(out)
    result = train_sane(small_args(zoo_dir, out, resume="last", **kw))
    assert result.finished and is_trained(out)
    assert json.loads((out / COMPLETE_NAME).read_text())["global_step"] == result.global_step
    marker = (out / COMPLETE_NAME).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= marker for p in out.iterdir() if p.is_file())
    # a later run in the folder (here a resume from an earlier checkpoint) is unfinished until it ends
    first = sorted((out / "checkpoints").glob("step-*"))[0]
    train_sane(small_args(zoo_dir, out, resume=str(first), stop_after_steps=result.global_step - 1, **kw))
    assert not is_trained(out)


def test_nan_loss_stops_and_names_the_step_and_the_last_good_checkpoint(zoo_dir, tmp_path):
    steps_per_epoch = len(epoch_batches(ZooData.from_zoos([zoo_dir]).num_rows("train"), 4, seed=0, epoch=0))
    bad_step = steps_per_epoch + 2  # in epoch 2, after the checkpoint of epoch 1

    class BreaksMidEpoch2(SaneTrainer):
        def compute_loss(self, batch, global_step):
            out = super().compute_loss(batch, global_step)
            if global_step + 1 == bad_step:
                out.loss = out.loss * float("nan")
            return out

    out = tmp_path / "nan"
    args = small_args(zoo_dir, out, epochs=3, logging_steps=1, eval_every=5, save_every=1)
    with pytest.raises(TrainingDivergedError, match=rf"step {bad_step};.*last good checkpoint is .*step-") as err:
        train_sane(args, trainer_class=BreaksMidEpoch2)
    checkpoint = out / "checkpoints" / f"step-{steps_per_epoch:07d}"
    assert str(checkpoint) in str(err.value) and (checkpoint / "model.safetensors").is_file()
    assert read_metrics(out)[-1]["type"] == "error" and read_metrics(out)[-1]["step"] == bad_step
    assert [m["step"] for m in read_metrics(out) if m["type"] == "train"] == list(range(1, bad_step))


# ------------------------------------------------------------------------------------ bad input


def test_bad_zoos_get_clear_errors(zoo_dir, tmp_path):
    with pytest.raises(ValueError, match="no training rows at zoo epochs"):
        ZooData.from_zoos([zoo_dir], epochs=[40])
    zoo = load_zoo(zoo_dir)
    no_epoch = copy.copy(zoo)
    no_epoch.dataset = zoo.dataset.remove_columns("epoch")
    with pytest.raises(ValueError, match=r"lacks the required column\(s\) \['epoch'\]"):
        ZooData.from_zoos([no_epoch])
    with pytest.raises(ValueError, match=r"no column\(s\) \['speed'\] to probe"):
        ZooData.from_zoos([zoo], properties=["speed"])
    # an MLP zoo beside the CNN zoo: automatic token sizes 65 and 33 differ
    mlp = copy.copy(zoo)
    mlp.architecture, mlp.architecture_kwargs = "mlp", {"in_features": 64}
    with pytest.raises(ValueError, match="no common token size.*--token_size 65"):
        ZooData.from_zoos([zoo, mlp])
    with pytest.raises(FileNotFoundError):
        train_sane(small_args(str(tmp_path / "nowhere"), tmp_path / "o"))
    from hyperrep_hf.cli import main

    assert main(["train", "--zoo", zoo_dir, "--output_dir", str(tmp_path / "o"), "--zoo_epochs", "40"]) == 2


def test_big_models_are_permuted_row_by_row_with_the_same_draws(zoo_dir, monkeypatch):
    import hyperrep_hf.training.data as data_module

    data = ZooData.from_zoos([zoo_dir])
    rows = torch.arange(6)
    batched = data.training_batch(rows, 1000, torch.Generator().manual_seed(1), Augmentation())
    monkeypatch.setattr(data_module, "GATHER_LIMIT", 0)
    row_by_row = data.training_batch(rows, 1000, torch.Generator().manual_seed(1), Augmentation())
    assert torch.equal(batched.targets, row_by_row.targets) and torch.equal(batched.tokens, row_by_row.tokens)


# ------------------------------------------------------------------------------------ processes


def test_two_cpu_processes_on_gloo_train_one_run_and_only_rank_0_writes(zoo_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes also on a GPU machine
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(ROOT / "scripts" / "train_sane.py"), "--zoo", zoo_dir, "--output_dir", str(out), "--epochs", "2",
           "--d_model", "16", "--num_layers", "1", "--num_heads", "2", "--latent_dim", "8", "--window_size", "16",
           "--batch_size", "4", "--logging_steps", "1", "--progress", "false", "--report_to", "none"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stdout
    num_train = ZooData.from_zoos([zoo_dir]).num_rows("train")
    per_rank = math.ceil(len(epoch_batches(num_train, 4, seed=0, epoch=0)) / 2)
    train = [m for m in read_metrics(out) if m["type"] == "train"]
    # each step logged once (rank 0 only), and each rank took half of the batches
    assert [m["step"] for m in train] == list(range(1, 2 * per_rank + 1))
    assert len([m for m in read_metrics(out) if m["type"] == "eval"]) == 2
    assert hyperrep_hf.SaneModel.from_pretrained(out).config.d_model == 16


def test_evaluation_tokenises_bounded_chunks_and_gives_the_same_figures(zoo_dir, monkeypatch):
    from hyperrep_hf import SaneConfig, SaneModel
    from hyperrep_hf.downstream import embedding
    from hyperrep_hf.training.evaluation import encode_split

    data = ZooData.from_zoos([zoo_dir])
    torch.manual_seed(0)
    model = SaneModel(SaneConfig.from_preset("tiny", token_size=data.tokenizer.token_size, window_size=16))
    whole = encode_split(model, data, "validation", window_size=16, batch_size=64)
    seen = []
    tokenize = data.tokenizer.tokenize_flat
    monkeypatch.setattr(data.tokenizer, "tokenize_flat", lambda w, *a, **k: seen.append(len(w)) or tokenize(w, *a, **k))
    monkeypatch.setattr(embedding, "EMBED_TOKEN_BYTES", 1)  # one model per chunk
    chunked = encode_split(model, data, "validation", window_size=16, batch_size=64)
    assert set(seen) == {1} and len(seen) == whole["rows"]
    torch.testing.assert_close(chunked["embeddings"], whole["embeddings"])
    assert chunked["reconstruction_loss"] == pytest.approx(whole["reconstruction_loss"], rel=1e-6)


def test_a_window_longer_than_every_model_says_so_and_trains_whole_models(zoo_dir, tmp_path, capsys):
    result = train_sane(small_args(zoo_dir, tmp_path / "run", window_size=64, epochs=1))
    assert "note: window 64 is longer than every model (44 tokens at most)" in capsys.readouterr().out
    assert result.global_step > 0
