"""What real zoos contain: diverged checkpoints (NaN / inf weights) and missing metrics. Probes,
probe tables, the probe command, split embeddings and sampling anchors leave such rows out and
count them; `epochs=` scores only the chosen checkpoints (NFN's test set: the final ones)."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.cards import check_model_card, probe_eval_results, sane_model_card
from hyperrep_hf.cli import main as cli
from hyperrep_hf.downstream.evaluation import (
    fit_probes,
    format_table,
    probe_table,
    score_split,
    usable_rows,
    zoo_features,
)
from hyperrep_hf.downstream.generation import prepare_sampling
from hyperrep_hf.downstream.probes import ProbeSet
from hyperrep_hf.zoo import build_zoo, import_zoo, load_zoo
from test_import_smallcnnzoo import write_zoo as write_small_cnn_zoo


def _corrupt_shard(path, weights_rows: dict[int, float], nan_acc_rows: list[int]) -> None:
    """Rewrite one parquet shard with some rows' weights set to `value` and some test_acc to NaN,
    keeping the schema (and its datasets feature metadata)."""
    table = pq.read_table(path)
    weights = table.column("weights").combine_chunks()
    size = weights.type.list_size
    flat = weights.flatten().to_numpy().copy().reshape(-1, size)
    for row, value in weights_rows.items():
        flat[row, :: max(1, size // 7)] = value  # a few entries, as a diverged checkpoint would hold
    acc = table.column("test_acc").to_numpy().copy()
    acc[nan_acc_rows] = np.nan
    i_w, i_a = table.schema.get_field_index("weights"), table.schema.get_field_index("test_acc")
    table = table.set_column(i_w, table.schema.field(i_w), pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), size))
    table = table.set_column(i_a, table.schema.field(i_a), pa.array(acc, type=pa.float32()))
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def clean_zoo(tmp_path_factory):
    # 10 models x epochs 0..2: 18 train, 6 validation, 6 test rows
    return build_zoo("digits-seed", tmp_path_factory.mktemp("zoo") / "clean", num_models=10, epochs=2, progress=False)


@pytest.fixture(scope="module")
def zoo(clean_zoo, tmp_path_factory):
    """The clean zoo with train row 0 diverged (NaN weights), train row 1 without test_acc, test row 0
    diverged (inf weights) and test row 1 without test_acc."""
    folder = tmp_path_factory.mktemp("zoo") / "real"
    shutil.copytree(clean_zoo.path, folder)
    (train,) = sorted((folder / "data").glob("train-*.parquet"))
    (test,) = sorted((folder / "data").glob("test-*.parquet"))
    _corrupt_shard(train, {0: float("nan")}, [1])
    _corrupt_shard(test, {0: float("inf")}, [1])
    return load_zoo(folder)


@pytest.fixture(scope="module")
def checkpoint(clean_zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    train = clean_zoo.weights("train")
    tok = WeightTokenizer()
    tok.layout_of(clean_zoo.build_model(train[0]))
    tok.fit_standardization(train)
    torch.manual_seed(0)
    SaneModel(SaneConfig.from_preset("tiny", token_size=tok.token_size, window_size=16)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_the_fixture_zoo_holds_what_real_zoos_hold(zoo):
    weights = zoo.weights("train")
    assert not torch.isfinite(weights[0]).all() and torch.isfinite(weights[1:]).all()
    assert math.isnan(zoo.metadata("train")["test_acc"][1]) and math.isnan(zoo.metadata("test")["test_acc"][1])
    assert torch.isinf(zoo.weights("test")[0]).any()


def test_usable_rows_leave_out_non_finite_weights_and_other_epochs(zoo):
    rows, left_out = usable_rows(zoo, "train")
    assert rows.tolist() == list(range(1, 18)) and left_out == {"non-finite weights": 1}
    epoch = zoo.metadata("test")["epoch"].to_numpy()
    rows, left_out = usable_rows(zoo, "test", epochs=[2])
    assert rows.tolist() == [i for i in range(6) if epoch[i] == 2 and i != 0]
    assert left_out == ({"non-finite weights": 1} if epoch[0] == 2 else {})
    with pytest.raises(ValueError, match=r"no rows at epochs \[7\].*epochs: \[0, 1, 2\]"):
        usable_rows(zoo, "test", epochs=[7])
    # features of the usable rows only: one per row, all finite
    for features in ("stats", "weights"):
        x = zoo_features(zoo, "train", features, rows=usable_rows(zoo, "train")[0])
        assert len(x) == 17 and torch.isfinite(x).all()


def test_a_split_with_only_diverged_rows_is_refused_by_name():
    class AllDiverged:  # what usable_rows reads of a zoo
        splits = ["test"]
        num_rows = staticmethod(lambda split: 2)
        metadata = staticmethod(lambda split, columns: pd.DataFrame({"epoch": [3, 3]}))
        rows = staticmethod(lambda split: torch.full((2, 4), float("nan")))

    with pytest.raises(ValueError, match=r"every row of split 'test' at epochs \[3\] has non-finite weights"):
        usable_rows(AllDiverged(), "test", epochs=[3])


def test_embedding_a_split_with_a_diverged_row_does_not_raise(zoo, checkpoint):
    model, tok = SaneModel.from_pretrained(checkpoint), WeightTokenizer.from_pretrained(checkpoint)
    x = zoo_features(zoo, "train", "sane", model, tok)  # every row, aligned with the split
    assert len(x) == 18 and torch.isnan(x[0]).all() and torch.isfinite(x[1:]).all()
    torch.testing.assert_close(x[1:], zoo_features(zoo, "train", "sane", model, tok, rows=usable_rows(zoo, "train")[0]))


def test_probe_table_leaves_out_diverged_rows_and_missing_targets_and_counts_them(zoo, checkpoint):
    rows = probe_table(zoo, checkpoint, properties=["test_acc", "epoch"], bootstrap=10)
    assert {(r["features"], r["property"]) for r in rows} == {(f, p) for f in ("sane", "stats", "stats-gbt", "weights")
                                                              for p in ("test_acc", "epoch")}
    for r in rows:
        assert math.isfinite(r["value"]) and math.isfinite(r["kendall_tau"])
        # test row 0 (inf weights) leaves every score; test row 1 leaves the test_acc scores only
        assert r["left_out"] == (2 if r["property"] == "test_acc" else 1)
        assert r["num_rows"] == 6 - r["left_out"]
    table = format_table(rows)
    assert "| left_out |" in table.splitlines()[0] and "kendall_tau" in table.splitlines()[0]
    probes = fit_probes(zoo, "stats", properties=["test_acc", "epoch"])
    assert probes.info["left_out"] == {"train": {"non-finite weights": 1, "test_acc": 1}, "validation": {}}
    assert probes.info["num_train"] == 17


def test_the_model_card_notes_what_its_probe_scores_left_out(zoo):
    probes = fit_probes(zoo, "stats", properties=["test_acc"])
    rows = score_split(zoo, {"stats": probes}, "test")
    card = sane_model_card(SaneConfig.from_preset("tiny", token_size=33), model_name="SANE on a real zoo",
                           eval_results=probe_eval_results({"test_acc": rows[0]["value"]}, dataset="org/zoo"),
                           left_out={**probes.info["left_out"], "test": {"non-finite weights": 1, "test_acc": 1}})
    check_model_card(card)
    text = str(card)
    assert "Left out of train: 1 row with non-finite weights, 1 row without test_acc." in text
    assert "Left out of test: 1 row with non-finite weights, 1 row without test_acc." in text
    assert "Left out of validation" not in text  # nothing was
    assert "Left out" not in str(sane_model_card(SaneConfig.from_preset("tiny", token_size=33), model_name="x"))


def test_rows_whose_statistics_overflow_leave_every_feature_set(clean_zoo, tmp_path):
    folder = tmp_path / "huge"
    shutil.copytree(clean_zoo.path, folder)
    (test,) = sorted((folder / "data").glob("test-*.parquet"))
    _corrupt_shard(test, {2: 1e30}, [])  # finite weights, but their squares overflow float32 s(W)
    zoo = load_zoo(folder)
    assert torch.isfinite(zoo.weights("test")).all()
    rows = probe_table(zoo, None, feature_sets=("stats", "weights"), properties=["test_acc"], bootstrap=5)
    # left out of W too, so that both are scored (and paired in the bootstrap) on the same rows
    assert [(r["features"], r["num_rows"], r["left_out"]) for r in rows] == [("stats", 5, 1), ("weights", 5, 1)]
    assert all(math.isfinite(r["value"]) for r in rows) and "vs_stats" in rows[1]


def test_probe_command_fits_and_scores_a_zoo_with_diverged_rows(zoo, checkpoint, tmp_path, capsys):
    assert cli(["probe", "fit", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "stats",
                "--properties", "test_acc", "epoch"]) == 0
    assert "left out of train: 1 row with non-finite weights, 1 row without test_acc" in capsys.readouterr().out
    out = tmp_path / "rows.json"
    assert cli(["probe", "eval", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "stats",
                "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["property"]: r["left_out"] for r in rows} == {"test_acc": 2, "epoch": 1}
    assert "left_out" in capsys.readouterr().out


def test_epochs_fit_and_score_only_those_checkpoints(zoo, checkpoint, tmp_path, capsys):
    meta = zoo.metadata("test")
    last = meta["epoch"] == 2
    rows = probe_table(zoo, None, feature_sets=("stats",), epochs=[2])
    # one epoch: epoch is no property to predict; test_acc and ggap are scored on the final checkpoints
    assert {r["property"] for r in rows} == {"test_acc", "ggap"}
    bad = int((~np.isfinite(meta["test_acc"].to_numpy()) & last.to_numpy()).sum()) + int(last[0])
    acc = next(r for r in rows if r["property"] == "test_acc")
    assert acc["num_rows"] == int(last.sum()) - bad and acc["left_out"] == bad
    probes = fit_probes(zoo, "stats", properties=["test_acc"], epochs=[2])
    assert probes.info["epochs"] == [2] and probes.info["num_train"] == len(usable_rows(zoo, "train", [2])[0])
    assert probes.info["num_train"] in (5, 6)  # 6 train models at epoch 2, one of them perhaps diverged
    with pytest.raises(ValueError, match="no rows at epochs"):
        fit_probes(zoo, "stats", properties=["test_acc"], epochs=[5])
    # the command: probes fitted at epoch 2 are scored at epoch 2 unless --epochs says otherwise
    assert cli(["probe", "fit", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "stats",
                "--properties", "test_acc", "--epochs", "2"]) == 0
    assert ProbeSet.load(checkpoint, "stats").info["epochs"] == [2]
    out = tmp_path / "rows.json"
    assert cli(["probe", "eval", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "stats",
                "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["num_rows"] == acc["num_rows"]
    assert cli(["probe", "eval", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "stats",
                "--epochs", "0", "1", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["num_rows"] == 6 - 2


def test_sampling_anchors_leave_out_diverged_rows(zoo, checkpoint):
    model, tok = SaneModel.from_pretrained(checkpoint), WeightTokenizer.from_pretrained(checkpoint)
    for epochs in ([0], [1], [2]):
        rows, left_out = usable_rows(zoo, "train", epochs)
        meta = zoo.metadata("train").iloc[rows]
        usable = int(np.isfinite(meta["val_acc"].to_numpy()).sum())
        anchors = prepare_sampling(checkpoint, zoo, epochs=epochs, model=model, tokenizer=tok, progress=False)
        assert anchors.info["num_anchors"] == usable
        assert anchors.info["left_out"].get("non-finite weights", 0) == left_out.get("non-finite weights", 0)
        assert torch.isfinite(anchors.latents).all()


def test_epochs_86_scores_exactly_nfns_test_set_of_the_small_cnn_zoo(tmp_path):
    # the Small CNN Zoo fixture: 6 models x 9 steps, model /tmp/zoo/31 diverged (NaN weights from step 20)
    folder, weights, metrics = write_small_cnn_zoo(tmp_path / "src")
    perm = np.random.default_rng(7).permutation(len(weights))
    pd.DataFrame(perm).to_csv(tmp_path / "split.csv", index=False)
    zoo = import_zoo("smallcnnzoo", folder, tmp_path / "zoo", split_file=tmp_path / "split.csv", progress=False)
    order = np.concatenate([[0], perm])  # NFN's reading of the split file (see test_import_smallcnnzoo)
    final = [i for i in order if metrics.step[i] == 86]
    nfn_test = {metrics.modeldir[final[p]] for p in range(len(final) // 2, len(final))}
    assert "/tmp/zoo/31" in nfn_test and len(zoo.dataset["test"]) > len(nfn_test)  # every epoch is in the split
    rows, left_out = usable_rows(zoo, "test", epochs=[86])
    assert set(zoo.metadata("test").source.iloc[rows]) == nfn_test - {"/tmp/zoo/31"} and left_out == {"non-finite weights": 1}
    table = probe_table(zoo, None, feature_sets=("stats", "weights"), properties=["test_acc"], epochs=[86])
    for r in table:  # NFN's test set: its final checkpoints, the diverged one left out and counted
        assert (r["num_rows"], r["left_out"]) == (len(nfn_test) - 1, 1)
        assert r["metric"] == "r2" and r["kendall_tau"] is not None


def test_stats_gbt_is_scored_beside_linear_stats_and_saved_by_fit(zoo, checkpoint, tmp_path, capsys):
    rows = probe_table(zoo, None, feature_sets=("stats", "stats-gbt"), properties=["test_acc", "epoch"], bootstrap=10)
    by = {(r["features"], r["property"]): r for r in rows}
    for prop in ("test_acc", "epoch"):
        gbt = by["stats-gbt", prop]
        assert gbt["num_rows"] == by["stats", prop]["num_rows"] and gbt["left_out"] == by["stats", prop]["left_out"]
        assert math.isfinite(gbt["value"]) and math.isfinite(gbt["kendall_tau"]) and gbt["penalty"] is None
        assert 1 <= gbt["hyperparameters"]["max_iter"] <= 200
        # paired differences both ways: trees vs linear s(W), linear s(W) vs trees
        assert gbt["vs_stats"] == pytest.approx(gbt["value"] - by["stats", prop]["value"])
        assert by["stats", prop]["vs_stats-gbt"] == pytest.approx(-gbt["vs_stats"])
        assert gbt["nonfinite"] >= 0 and "vs_stats_nonfinite" in gbt
    # the command: fit saves the trees (arrays, no pickle), eval fits and scores them in place
    saved = tmp_path / "ckpt"
    shutil.copytree(checkpoint, saved)
    assert cli(["probe", "fit", "--checkpoint", str(saved), "--zoo", str(zoo.path), "--features", "stats-gbt",
                "--properties", "test_acc", "epoch"]) == 0
    from hyperrep_hf.downstream.trees import TreeProbeSet

    x = zoo_features(zoo, "test", "stats")
    x = x[torch.isfinite(x).all(1)]
    fresh = fit_probes(zoo, "stats-gbt", properties=["test_acc", "epoch"])
    assert TreeProbeSet.load(saved).predict(x) == fresh.predict(x)
    out = tmp_path / "rows.json"
    assert cli(["probe", "eval", "--checkpoint", str(checkpoint), "--zoo", str(zoo.path), "--features", "stats-gbt",
                "--properties", "test_acc", "epoch", "--json", str(out)]) == 0
    scored = {r["property"]: r for r in json.loads(out.read_text())}
    assert scored["test_acc"]["value"] == pytest.approx(by["stats-gbt", "test_acc"]["value"])
    assert "not saved" in capsys.readouterr().out
