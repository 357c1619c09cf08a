"""Fine-tuning a SANE property head: SaneForPropertyPrediction, `hyperrep finetune`, the pipeline and
probe_table's "sane-finetuned", resume, freezing, remote code and the bad inputs.

One small digits zoo (20 CNNs, 3 epochs) and one SANE pretrained on it for a few seconds serve all tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hyperrep_hf
from hyperrep_hf import SaneConfig
from hyperrep_hf.cli import main as cli
from hyperrep_hf.modeling_sane import (
    AutoModelForWeightPropertyPrediction,
    SaneForPropertyPrediction,
    SaneModel,
)
from hyperrep_hf.training import SaneTrainingArguments, train_sane
from hyperrep_hf.training.finetune import SaneFinetuningArguments, finetune_sane
from hyperrep_hf.zoo import build_zoo, load_zoo

FAST = dict(batch_size=8, learning_rate=1e-2, encoder_learning_rate=1e-3, pct_start=0.1, progress=False,
            report_to=["none"], mixed_precision="no", early_stopping_patience=0)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("zoo") / "digits"
    torch.set_num_threads(1)
    build_zoo("digits-seed", out, num_models=20, epochs=3, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def sane_dir(zoo_dir, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("sane") / "sane"
    train_sane(SaneTrainingArguments(zoo=[zoo_dir], output_dir=str(out), d_model=32, num_layers=1, num_heads=2,
                                     latent_dim=8, window_size=16, batch_size=8, epochs=10, learning_rate=3e-3,
                                     eval_every=10, progress=False, report_to=["none"], mixed_precision="no"))
    return str(out)


@pytest.fixture(scope="module")
def head_dir(zoo_dir, sane_dir, tmp_path_factory) -> str:
    """A head fine-tuned on test_acc and epoch for 8 epochs, with TensorBoard logs (via the CLI)."""
    out = tmp_path_factory.mktemp("head") / "head"
    flags = [f"--{k}={v}" for k, v in {**FAST, "report_to": "tensorboard", "epochs": 8}.items() if k != "progress"]
    assert cli(["finetune", "--checkpoint", sane_dir, "--zoo", zoo_dir, "--output_dir", str(out), "--properties",
                "test_acc", "epoch", "--progress", "false", *flags]) == 0
    return str(out)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_the_head_learns_and_the_run_reports_validation_and_test(head_dir, zoo_dir):
    evals = [m for m in metrics(head_dir) if m["type"] == "eval"]
    assert len(evals) == 8
    # the loss of predicting the train mean, i.e. of a head that learned nothing (targets standardised)
    zoo = load_zoo(zoo_dir)
    train, val = zoo.metadata("train"), zoo.metadata("validation")
    chance = np.mean([np.mean(((val[p] - train[p].mean()) / train[p].std(ddof=0)) ** 2) for p in ("test_acc", "epoch")])
    best = min(e["val_loss"] for e in evals)
    assert best < chance - 0.03, (best, chance, [e["val_loss"] for e in evals])
    results = json.loads((Path(head_dir) / "eval_results.json").read_text())
    chosen = next(e for e in evals if e["epoch"] == results["best_epoch"])
    assert chosen["val_loss"] == best  # the model kept is that of the best validation epoch
    assert results["validation"]["loss"] == pytest.approx(best, rel=1e-5)
    assert set(results["test"]) == {"loss", "test_acc", "epoch"} and "kendall_tau" in results["test"]["epoch"]
    card = (Path(head_dir) / "README.md").read_text()
    assert "model-index" in card and "split: test" in card.replace("'", "") and "Kendall tau epoch" in card
    assert (Path(head_dir) / "training_complete.json").is_file()
    assert any(Path(head_dir, "runs").rglob("events.out.tfevents.*"))
    config = json.loads((Path(head_dir) / "config.json").read_text())
    assert config["auto_map"]["AutoModelForWeightPropertyPrediction"] == "modeling_sane.SaneForPropertyPrediction"
    assert [p["name"] for p in config["properties"]] == ["test_acc", "epoch"]
    assert config["properties"][0]["mean"] == pytest.approx(float(np.mean(train["test_acc"])), rel=1e-4)


def test_resume_after_an_interruption_equals_the_uninterrupted_run(zoo_dir, sane_dir, tmp_path):
    options = dict(checkpoint=sane_dir, zoo=zoo_dir, properties=["test_acc"], epochs=3, **FAST)
    finetune_sane(SaneFinetuningArguments(output_dir=str(tmp_path / "a"), **options))
    stopped = finetune_sane(SaneFinetuningArguments(output_dir=str(tmp_path / "b"), stop_after_steps=10, **options))
    assert not stopped.finished and stopped.global_step == 10  # mid-epoch 2 (7 steps per epoch)
    resumed = finetune_sane(SaneFinetuningArguments(output_dir=str(tmp_path / "b"), resume="last", **options))
    assert resumed.finished
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["val_loss"] for m in metrics(tmp_path / "a") if m["type"] == "eval"] == \
        [m["val_loss"] for m in metrics(tmp_path / "b") if m["type"] == "eval"]
    with pytest.raises(ValueError, match="options differ.*learning_rate"):
        finetune_sane(SaneFinetuningArguments(output_dir=str(tmp_path / "b"), resume="last",
                                              **{**options, "learning_rate": 0.5}))


def test_freeze_encoder_trains_only_the_head_and_s_w_can_join_the_latents(zoo_dir, sane_dir, tmp_path):
    from transformers import pipeline

    from hyperrep_hf.downstream.evaluation import FinetunedHead
    from hyperrep_hf.weightspace.statistics import weight_statistics

    finetune_sane(SaneFinetuningArguments(checkpoint=sane_dir, zoo=zoo_dir, output_dir=str(tmp_path / "f"),
                                          properties=["epoch"], epochs=1, freeze_encoder=True, pooling="layer",
                                          head_hidden_dim=8, statistics_features=True, **FAST))
    pretrained = SaneModel.from_pretrained(sane_dir)
    tuned = AutoModelForWeightPropertyPrediction.from_pretrained(tmp_path / "f")
    assert tuned.config.freeze_encoder and tuned.config.head_layers == 4  # the digits CNN's weight layers
    zoo = load_zoo(zoo_dir)
    assert tuned.config.head_statistics == weight_statistics(zoo.weights("test")[:1], zoo.layout)[0].shape[1] == 7 * 8
    assert tuned.head.feature_mean.numel() == 4 * 8 + 56  # layer-pooled latents, then s(W)
    for name, p in pretrained.encoder.state_dict().items():
        assert torch.equal(p, tuned.sane.encoder.state_dict()[name]), name
    assert not any(p.requires_grad for p in tuned.sane.parameters())
    fresh = SaneForPropertyPrediction.from_pretrained(sane_dir, properties=["epoch"], head_pooling="layer",
                                                      head_layers=4, head_hidden_dim=8, head_statistics=56)
    assert not torch.equal(fresh.head.net[1].weight[:, :32], tuned.head.net[1].weight[:, :32])  # the head did train
    head = FinetunedHead.load(tmp_path / "f")
    expected = head.predict(head.outputs(zoo.weights("test"), 0))["epoch"]
    assert [r["epoch"] for r in pipeline("weight-property-prediction", model=str(tmp_path / "f"))(zoo.dataset["test"])] \
        == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match=r"this head reads 56 s\(W\) statistics"):
        enc = head.tokenizer.tokenize_flat(zoo.weights("test")[:2])
        tuned(enc["tokens"], enc["positions"], enc["attention_mask"])


def test_pipeline_and_probe_table_use_the_fine_tuned_head(head_dir, zoo_dir, sane_dir):
    from transformers import pipeline

    from hyperrep_hf.downstream.evaluation import probe_table

    zoo = load_zoo(zoo_dir)
    model = AutoModelForWeightPropertyPrediction.from_pretrained(head_dir).eval()
    enc = hyperrep_hf.WeightTokenizer.from_pretrained(head_dir).tokenize_flat(zoo.weights("test"))
    with torch.no_grad():
        expected = model.predictions(model(enc["tokens"], enc["positions"], enc["attention_mask"]).logits)
    pipe = pipeline("weight-property-prediction", model=head_dir)
    rows = pipe(zoo.dataset["test"])
    assert [r["epoch"] for r in rows] == pytest.approx(expected["epoch"], abs=1e-5)
    one = pipe(zoo.build_model({**zoo.metadata("test").iloc[0].to_dict(), "weights": zoo.weights("test")[0]}))
    assert set(one) == {"test_acc", "epoch"} and one["test_acc"] == pytest.approx(expected["test_acc"][0], abs=1e-5)
    with pytest.raises(ValueError, match=r"predicts \['test_acc', 'epoch'\], not \['ggap'\]"):
        pipe(zoo.dataset["test"], properties=["ggap"])

    table = probe_table(zoo, checkpoint=sane_dir, finetuned=head_dir, feature_sets=["sane-finetuned", "stats"],
                        bootstrap=20)
    tuned = {r["property"]: r for r in table if r["features"] == "sane-finetuned"}
    assert set(tuned) == {"test_acc", "epoch"} and "vs_stats_ci" in tuned["epoch"]
    results = json.loads((Path(head_dir) / "eval_results.json").read_text())
    assert tuned["epoch"]["value"] == pytest.approx(results["test"]["epoch"]["r2"], abs=1e-4)
    assert tuned["test_acc"]["validation"] == pytest.approx(results["validation"]["test_acc"]["r2"], abs=1e-4)
    assert {r["features"] for r in table} == {"sane-finetuned", "stats"}
    out = Path(head_dir).parent / "eval.json"
    assert cli(["probe", "eval", "--checkpoint", sane_dir, "--zoo", zoo_dir, "--features", "sane-finetuned",
                "--finetuned", head_dir, "--json", str(out)]) == 0
    assert {r["property"]: r["value"] for r in json.loads(out.read_text())} == pytest.approx(
        {p: results["test"][p]["r2"] for p in ("test_acc", "epoch")}, abs=1e-4)


def test_the_blend_picks_the_head_weight_on_validation():
    from types import SimpleNamespace

    from hyperrep_hf.downstream.blend import BlendedProbeSet

    class Fixed:  # a head or trees predicting set values: the first column of x indexes them
        def __init__(self, values, kinds):
            self.values, self.probes = values, {n: SimpleNamespace(kind=k) for n, k in kinds.items()}
            self.model = SimpleNamespace(output_sizes=[1])
            self.properties = list(kinds)

        def predict(self, x, names):
            return {n: [self.values[n][int(i)] for i in x[:, 0]] for n in names}

    rng = np.random.default_rng(0)
    h, t = rng.normal(size=40), rng.normal(size=40)
    head = Fixed({"acc": h, "act": ["relu"] * 40}, {"acc": "regression", "act": "classification"})
    labels = ["relu"] * 10 + ["tanh"] * 30
    trees = Fixed({"acc": t, "act": labels, "lr": t}, {"acc": "regression", "act": "classification", "lr": "regression"})
    x = torch.arange(40.0)[:, None].repeat(1, 2)  # column 0: the head's "outputs", column 1: the trees' features
    blend = BlendedProbeSet.fit(head, trees, x, {"acc": 0.3 * h + 0.7 * t, "act": labels})
    assert blend.properties == ["acc", "act"]  # lr: the head does not predict it
    assert blend.probes["acc"].hyperparameters == {"head_weight": 0.3} and blend.probes["acc"].validation["r2"] == pytest.approx(1)
    assert blend.probes["act"].hyperparameters == {"head_weight": 0.0}  # the trees' labels are right on validation
    predicted = blend.predict(x[:5])
    assert predicted["acc"] == pytest.approx(0.3 * h[:5] + 0.7 * t[:5]) and predicted["act"] == labels[:5]
    with pytest.raises(ValueError, match="no property in common"):
        BlendedProbeSet.fit(head, Fixed({"lr": t}, {"lr": "regression"}), x, {})
    with pytest.raises(ValueError, match=r"need the head's 1 outputs and the s\(W\) statistics side by side"):
        blend.predict(x[:, :1])


def test_probe_table_and_the_cli_blend_the_head_with_the_trees(head_dir, zoo_dir, sane_dir, capsys):
    from hyperrep_hf.downstream.evaluation import (
        FinetunedHead,
        fit_probes,
        probe_table,
        usable_rows,
        zoo_features,
        zoo_targets,
    )
    from hyperrep_hf.downstream.probes import property_score

    zoo = load_zoo(zoo_dir)
    table = probe_table(zoo, checkpoint=sane_dir, finetuned=head_dir, bootstrap=20,
                        feature_sets=["sane-finetuned", "stats-gbt", "sane-finetuned+stats-gbt"])
    rows = {(r["features"], r["property"]): r for r in table}
    for name in ("test_acc", "epoch"):
        blend, head, trees = (rows[f, name] for f in ("sane-finetuned+stats-gbt", "sane-finetuned", "stats-gbt"))
        # weights 0 and 1 are among the choices: validation is at least as good as either part's
        assert blend["validation"] >= max(head["validation"], trees["validation"]) - 1e-9
        assert 0 <= blend["hyperparameters"]["head_weight"] <= 1 and "vs_stats-gbt_ci" in blend
    # the test value is the chosen mix of the parts' test predictions
    w = rows["sane-finetuned+stats-gbt", "epoch"]["hyperparameters"]["head_weight"]
    test_rows, _ = usable_rows(zoo, "test")
    head = FinetunedHead.load(head_dir)
    h = head.predict(zoo_features(zoo, "test", "sane-finetuned", head.model, head.tokenizer, rows=test_rows))["epoch"]
    t = fit_probes(zoo, "stats-gbt", properties=["test_acc", "epoch"]).predict(
        zoo_features(zoo, "test", "stats", rows=test_rows), ["epoch"])["epoch"]
    y = zoo_targets(zoo, "test", ["epoch"], test_rows)["epoch"]
    expected = property_score("regression", y, w * np.array(h) + (1 - w) * np.array(t))["r2"]
    assert rows["sane-finetuned+stats-gbt", "epoch"]["value"] == pytest.approx(expected, abs=1e-6)
    out = Path(head_dir).parent / "blend.json"
    assert cli(["probe", "eval", "--checkpoint", sane_dir, "--zoo", zoo_dir, "--features", "sane-finetuned+stats-gbt",
                "--finetuned", head_dir, "--json", str(out)]) == 0
    weights = {n: rows["sane-finetuned+stats-gbt", n]["hyperparameters"]["head_weight"] for n in ("test_acc", "epoch")}
    assert (f"the head's weight per property, chosen on validation: test_acc {weights['test_acc']:g}, epoch "
            f"{weights['epoch']:g}") in capsys.readouterr().out
    scored = {r["property"]: r["value"] for r in json.loads(out.read_text())}
    assert scored == pytest.approx({n: rows["sane-finetuned+stats-gbt", n]["value"] for n in ("test_acc", "epoch")})


def test_a_saved_blend_is_what_the_pipeline_of_its_head_predicts(head_dir, zoo_dir, tmp_path, capsys, hub_repo_id):
    from transformers import pipeline

    from hyperrep_hf.downstream.blend import BlendedProbeSet, has_blend
    from hyperrep_hf.downstream.evaluation import (
        blended_head,
        finetuned_head,
        fit_probes,
        usable_rows,
        zoo_features,
    )
    from hyperrep_hf.hub import push_checkpoint

    own = tmp_path / "head"
    shutil.copytree(head_dir, own)
    assert not has_blend(own)
    before = push_checkpoint(own, hub_repo_id).oid  # a head without a blend, by repo id
    assert not has_blend(hub_repo_id, before)
    assert cli(["probe", "fit", "--checkpoint", str(own), "--zoo", zoo_dir, "--features", "sane-finetuned"]) == 2
    assert "--features sane-finetuned+stats-gbt" in capsys.readouterr().err
    assert cli(["probe", "fit", "--checkpoint", str(own), "--zoo", zoo_dir, "--features", "sane-finetuned+stats-gbt"]) == 0
    assert has_blend(own) and {p.name for p in (own / "probes").iterdir()} == {
        "sane-finetuned+stats-gbt.json", "sane-finetuned+stats-gbt-trees.json", "sane-finetuned+stats-gbt-trees.safetensors"}
    # the head's card keeps its own results and gains the blend's validation scores, once after a refit
    from huggingface_hub import ModelCard

    card_before = ModelCard.load(Path(head_dir) / "README.md")
    assert cli(["probe", "fit", "--checkpoint", str(own), "--zoo", zoo_dir, "--features", "sane-finetuned+stats-gbt"]) == 0
    card = ModelCard.load(own / "README.md")
    blend_meta = json.loads((own / "probes" / "sane-finetuned+stats-gbt.json").read_text())["probes"]
    entries = {r.metric_name: r.metric_value for r in card.data.eval_results if r.metric_name.endswith("(blend)")}
    assert entries == pytest.approx({f"R^2 {n} (blend)": m["validation"]["r2"] for n, m in blend_meta.items()})
    assert [r for r in card.data.eval_results if not r.metric_name.endswith("(blend)")] == card_before.data.eval_results
    assert card.text.count("## Blend with s(W)+GBT") == 1 and "R^2 epoch (blend)" in card.text
    # the saved blend is the one probe tables build in memory: same weights, same predictions
    zoo = load_zoo(zoo_dir)
    head = finetuned_head(zoo, own)
    fresh = blended_head(zoo, head, fit_probes(zoo, "stats-gbt", properties=head.properties))
    saved = BlendedProbeSet.load(own)
    assert {n: b.hyperparameters for n, b in saved.probes.items()} == {n: b.hyperparameters for n, b in fresh.probes.items()}
    rows, _ = usable_rows(zoo, "test")
    x = zoo_features(zoo, "test", "sane-finetuned+stats-gbt", head.model, head.tokenizer, rows=rows)
    expected = fresh.predict(x)
    assert saved.predict(x) == expected
    # ... and the pipeline of the checkpoint predicts with it, on a zoo split and on one model
    pipe = pipeline("weight-property-prediction", model=str(own))
    assert pipe.blend is not None
    predicted = [r for r in pipe(zoo.dataset["test"]) if r["epoch"] is not None]
    assert [r["epoch"] for r in predicted] == pytest.approx(expected["epoch"], abs=1e-5)
    one = pipe(zoo.build_model({**zoo.metadata("test").iloc[rows[0]].to_dict(), "weights": zoo.weights("test")[rows[0]]}))
    assert one["test_acc"] == pytest.approx(expected["test_acc"][0], abs=1e-5)
    # where the blend leans on the trees, it differs from the head alone
    head_only = pipeline("weight-property-prediction", model=head_dir)(zoo.dataset["test"])
    weights = [b.hyperparameters["head_weight"] for b in saved.probes.values()]
    if min(weights) < 1:
        assert [r for r in head_only if r["epoch"] is not None] != predicted
    # by repo id: pushed with its head, the blend is what the Hub pipeline predicts with
    push_checkpoint(own, hub_repo_id)
    by_id = pipeline("weight-property-prediction", model=hub_repo_id)
    assert by_id.blend is not None
    assert [r["epoch"] for r in by_id(zoo.dataset["test"]) if r["epoch"] is not None] == pytest.approx(expected["epoch"], abs=1e-5)
    assert pipeline("weight-property-prediction", model=hub_repo_id, revision=before).blend is None
    # the checkpoint's own code predicts the same without hyperrep_hf and without scikit-learn
    torch.save({"x": zoo.weights("test")[rows[0]], "expected": {n: v[0] for n, v in expected.items()}}, tmp_path / "io.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", BLEND_WITHOUT_PACKAGE, str(own), str(tmp_path / "io.pt")],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "blend without package ok" in result.stdout


# A fresh interpreter where hyperrep_hf cannot be imported: the copied code only, which must not need
# scikit-learn either (torch probes for it with find_spec, so it is checked afterwards, not hidden).
BLEND_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hyperrep_hf":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, Hide())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/src")]
    import torch
    from transformers import pipeline

    folder, io_path = sys.argv[1:3]
    io = torch.load(io_path)
    pipe = pipeline("weight-property-prediction", model=folder, trust_remote_code=True)
    assert type(pipe).__module__.startswith("transformers_modules."), type(pipe)
    assert pipe.blend is not None
    got = pipe(io["x"])
    assert got.keys() == io["expected"].keys(), got
    assert all(abs(got[k] - io["expected"][k]) < 1e-5 for k in got), (got, io["expected"])
    assert not [m for m in sys.modules if m.startswith(("hyperrep_hf", "sklearn"))]
    print("blend without package ok")
    """
)


def test_a_fine_tuned_checkpoint_carries_the_code_of_its_head(head_dir):
    """The fresh-process load without hyperrep_hf is tests/test_remote_code.py's; here: what it would need."""
    from hyperrep_hf.remote_code import check_remote_code

    sources = {p.name: p.read_text() for p in Path(head_dir).glob("*.py")}
    check_remote_code(sources)  # torch / transformers / numpy / safetensors and siblings only
    assert "class SaneForPropertyPrediction" in sources["modeling_sane.py"]
    assert "SaneForPropertyPrediction.from_pretrained" in sources["weight_property_prediction.py"]
    assert "from .modeling_sane import" in sources["weight_property_prediction.py"]


def test_bad_inputs_name_the_property_the_labels_the_sizes_and_the_zoo(zoo_dir, sane_dir, head_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"has no property 'accuracy' to fine-tune on"):
        finetune_sane(SaneFinetuningArguments(checkpoint=sane_dir, zoo=zoo_dir, output_dir=str(tmp_path / "x"),
                                              properties=["test_acc", "accuracy"], **FAST))
    config = SaneConfig.from_preset("tiny", token_size=5, d_model=16, latent_dim=4, window_size=4,
                                    max_positions=(8, 4, 4),
                                    properties=[{"name": "activation", "kind": "classification", "labels": ["relu", "tanh"]}])
    with pytest.raises(ValueError, match=r"property 'activation': label 'gelu' is none of the labels .*\['relu', 'tanh'\]"):
        SaneForPropertyPrediction(config).encode_labels({"activation": ["relu", "gelu"]})
    # a head's weights under the config of a SANE of another size
    other = tmp_path / "other"
    shutil.copytree(head_dir, other)
    saved = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**saved, "latent_dim": 16}))
    with pytest.raises(ValueError, match=r"latent_dim=16.*sane.encoder.head.weight: \(8, 32\) in the checkpoint, \(16, 32\)"):
        SaneForPropertyPrediction.from_pretrained(other)
    with pytest.raises(ValueError, match="needs config.properties"):
        SaneForPropertyPrediction.from_pretrained(sane_dir)
    # a zoo of another architecture (an MLP on digits) than the checkpoint's CNN
    mlp = build_zoo({"architecture": "mlp", "architecture_kwargs": {"in_features": 64, "hidden": [8]}, "task": "digits",
                     "name": "mlp-digits"}, tmp_path / "mlp", num_models=3, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"cannot fine-tune .* on zoo .*mlp.*\(mlp\)"):
        finetune_sane(SaneFinetuningArguments(checkpoint=sane_dir, zoo=str(mlp.path), output_dir=str(tmp_path / "y"),
                                              properties=["test_acc"], **FAST))
    capsys.readouterr()
    assert cli(["probe", "fit", "--checkpoint", sane_dir, "--zoo", zoo_dir, "--features", "sane-finetuned"]) == 2
    assert "sane-finetuned scores a fine-tuned head, not a probe" in capsys.readouterr().err
    assert cli(["probe", "fit", "--checkpoint", sane_dir, "--zoo", zoo_dir, "--features", "sane-finetuned+stats-gbt"]) == 2
    assert "has no property head" in capsys.readouterr().err  # a blend is fitted onto a fine-tuned checkpoint


def test_the_study_script_chooses_on_validation_scores_on_test_and_resumes(zoo_dir, sane_dir, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_finetune", Path(__file__).parents[1] / "scripts" / "study_finetune.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    argv = ["--zoo", zoo_dir, "--checkpoint", sane_dir, "--out", str(tmp_path), "--properties", "test_acc",
            "--settings", "mean", "mean-stats", "--epochs", "2", "--threads", "1"]
    assert study.main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    r2 = {n: s["validation"]["test_acc"]["r2"] for n, s in summary["settings"].items()}
    assert summary["chosen"] == {"test_acc": max(r2, key=r2.get)} and set(r2) == {"mean", "mean-stats"}
    assert {r["features"] for r in summary["table"]} == {"sane-finetuned", "sane", "stats", "stats-gbt",
                                                         "sane-finetuned+stats-gbt"}
    finetuned = next(r for r in summary["table"] if r["features"] == "sane-finetuned")
    assert finetuned["validation"] == pytest.approx(max(r2.values()), abs=0.01)  # bf16 in training, fp32 here
    # the verdicts read the paired intervals of R^2 and of Kendall's tau
    head = next(v for v in summary["verdicts"] if v["features"] == "sane-finetuned")
    low, high = finetuned["vs_stats-gbt_tau_ci"]
    assert head["tau vs stats-gbt"] == ("ahead" if low > 0 else "behind" if high < 0 else "level")
    assert head["r2 vs stats"] == study.verdict(finetuned["vs_stats_ci"])
    assert [study.verdict(i) for i in ([0.01, 0.2], [-0.2, -0.01], [-0.1, 0.0], [0.0, 0.0])] == ["ahead", "behind", "level", "level"]
    done = (tmp_path / "mean" / "training_complete.json").stat().st_mtime_ns
    capsys.readouterr()
    assert study.main(argv) == 0  # a rerun reads the finished settings back
    assert (tmp_path / "mean" / "training_complete.json").stat().st_mtime_ns == done
    assert "chosen on validation: " + json.dumps(summary["chosen"]) in capsys.readouterr().out
