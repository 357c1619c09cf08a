"""The shared import writer: resume after a kill, clean restart, source and extra columns, atomicity."""

import json

import datasets
import pytest
import torch

from hyperrep_hf.zoo import import_zoo, load_zoo
from hyperrep_hf.zoo.importers import modelzoos, writer
from hyperrep_hf.zoo.importers.writer import work_folder
from test_zoo_import import _write_trial


def _source(tmp_path, n=5):
    for i in range(n):
        _write_trial(tmp_path / "src", i, epochs=1, nlin="tanh" if i % 2 else "relu")
    return tmp_path / "src"


def _rows(zoo):
    out = {}
    for split in zoo.dataset:
        meta = zoo.metadata(split)
        w = zoo.weights(split)
        for r in range(len(meta)):
            out[(meta.source[r], int(meta.epoch[r]))] = (split, w[r])
    return out


def _count_reads(monkeypatch, fail_at=None):
    calls = {"n": 0}
    real = modelzoos.torch_state_dict

    def counting(data, where):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("killed")  # what a Ctrl-C / kill in the middle looks like to the import
        return real(data, where)

    monkeypatch.setattr(modelzoos, "torch_state_dict", counting)
    return calls


def test_a_killed_import_resumes_where_it_stopped_and_matches_a_clean_one(tmp_path, monkeypatch):
    src = _source(tmp_path)
    reference = import_zoo("modelzoos", src, tmp_path / "ref", models_per_shard=2, progress=False)
    calls = _count_reads(monkeypatch, fail_at=9)  # 2 checkpoints per model: dies in the 5th model (3rd shard)
    with pytest.raises(KeyboardInterrupt):
        import_zoo("modelzoos", src, tmp_path / "zoo", models_per_shard=2, progress=False)
    assert not (tmp_path / "zoo").exists()  # nothing half-written in --out
    assert sorted(p.name for p in (work_folder(tmp_path / "zoo") / "progress").iterdir()) == ["shard-00000.json", "shard-00001.json"]

    calls = _count_reads(monkeypatch)
    zoo = import_zoo("modelzoos", src, tmp_path / "zoo", models_per_shard=2, progress=False)
    assert calls["n"] == 2  # only the unfinished shard (one model, two checkpoints) was read again
    assert not work_folder(tmp_path / "zoo").exists()
    got, want = _rows(zoo), _rows(reference)
    assert got.keys() == want.keys() and len(got) == 10
    for key, (split, w) in want.items():
        assert got[key][0] == split
        torch.testing.assert_close(got[key][1], w)
    assert zoo.info["checkpoint_epochs"] == [0, 1] and zoo.info["num_models"] == 5


def test_large_shards_are_written_in_parts_and_a_kill_between_parts_leaves_no_duplicates(tmp_path, monkeypatch):
    src = _source(tmp_path)
    reference = _rows(import_zoo("modelzoos", src, tmp_path / "ref", progress=False))
    monkeypatch.setattr(writer, "MAX_SHARD_BYTES", 3 * 2464 * 4)  # a part every three rows
    _count_reads(monkeypatch, fail_at=8)  # one shard of 5 models: dies after two parts of it are on disk
    with pytest.raises(KeyboardInterrupt):
        import_zoo("modelzoos", src, tmp_path / "zoo", progress=False)
    assert len(list((work_folder(tmp_path / "zoo") / "data").glob("*.parquet"))) >= 2
    _count_reads(monkeypatch)
    zoo = import_zoo("modelzoos", src, tmp_path / "zoo", progress=False)
    parts = sorted(p.name for p in (tmp_path / "zoo" / "data").glob("*.parquet"))
    assert len(parts) >= 4 and all(p.split("-")[1] == "00000" for p in parts)
    got = _rows(zoo)
    assert got.keys() == reference.keys() and sum(len(d) for d in zoo.dataset.values()) == 10
    for key, (split, w) in reference.items():
        assert got[key][0] == split
        torch.testing.assert_close(got[key][1], w)


def test_an_interrupted_import_with_other_options_restarts_cleanly(tmp_path, monkeypatch):
    src = _source(tmp_path)
    _count_reads(monkeypatch, fail_at=5)
    with pytest.raises(KeyboardInterrupt):
        import_zoo("modelzoos", src, tmp_path / "zoo", models_per_shard=1, progress=False)
    calls = _count_reads(monkeypatch)
    zoo = import_zoo("modelzoos", src, tmp_path / "zoo", models_per_shard=1, seed=7, progress=False)
    assert calls["n"] == 10  # another seed means other splits: nothing of the old run is reused
    assert sum(len(d) for d in zoo.dataset.values()) == 10


def test_imported_rows_carry_their_source_and_the_configs_hyperparameters_as_typed_columns(tmp_path):
    src = _source(tmp_path, n=3)
    zoo = import_zoo("modelzoos", src, tmp_path / "zoo", progress=False)
    sidecar = json.loads((tmp_path / "zoo" / "zoo_config.json").read_text())
    assert sidecar["extra_columns"]["source"] == "string"
    assert sidecar["extra_columns"]["model_type"] == "string" and sidecar["extra_columns"]["model_channels_in"] == "int64"
    assert zoo.extra_columns == sidecar["extra_columns"]
    # the parquet features declare them too, so plain datasets reads the same types
    plain = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (tmp_path / "zoo" / "data").glob("*.parquet")))["train"]
    assert plain.features["source"].dtype == "string" and plain.features["model_channels_in"].dtype == "int64"
    rows = [r for s in zoo.dataset for r in zoo.dataset[s]]
    assert sorted({r["source"] for r in rows}) == sorted(p.name for p in src.iterdir())
    assert {r["model_type"] for r in rows} == {"CNN"}
    for r in rows:
        assert r["source"].endswith(f"seed={r['seed']}")
    card = (tmp_path / "zoo" / "README.md").read_text()
    assert "Imported with `hyperrep zoo import --format modelzoos`" in card and "`source` names the original model" in card
    assert "population training" not in card


def test_a_rerun_on_a_finished_zoo_refuses_to_overwrite_it(tmp_path):
    src = _source(tmp_path, n=3)
    import_zoo("modelzoos", src, tmp_path / "zoo", progress=False)
    with pytest.raises(ValueError, match=r"zoo is not empty: choose a new --out folder"):
        import_zoo("modelzoos", src, tmp_path / "zoo", progress=False)
    assert load_zoo(tmp_path / "zoo").info["num_models"] == 3


def test_unknown_format_lists_the_formats(tmp_path):
    with pytest.raises(ValueError, match=r"unknown import format 'nope'; choose one of \[.*'modelzoos'"):
        import_zoo("nope", tmp_path, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
