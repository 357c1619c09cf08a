"""Building zoos: the dataset layout, rows back to models, resume after a kill, two processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch

from hyperrep_hf.zoo import build_zoo, evaluate_accuracy, load_task, load_zoo
from hyperrep_hf.zoo.spec import ZooSpec

ROOT = Path(__file__).resolve().parents[1]
# A tiny hyperparameter zoo: 6 models x epochs 0..2, two activations (two groups), two optimizers.
TINY = {
    "architecture": "cnn-digits",
    "task": "digits",
    "task_kwargs": {"limit": 150},
    "hyperparameters": {"activation": ["tanh", "relu"], "optimizer": ["adam", "sgd"], "lr": [0.01], "init": ["kaiming_uniform", "xavier_uniform"]},
    "num_models": 6,
    "epochs": 2,
    "population_size": 2,
}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    return build_zoo(TINY, tmp_path_factory.mktemp("zoo") / "tiny", progress=False)


def test_zoo_folder_loads_with_datasets_split_by_model(tiny_zoo):
    dd = datasets.load_dataset(str(tiny_zoo.path))
    assert set(dd) == {"train", "validation", "test"}
    columns = set(dd["train"].column_names)
    assert {"model_id", "epoch", "weights", "train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss",
            "ggap", "architecture", "diverged", "seed", "activation", "init", "optimizer", "lr", "weight_decay", "dropout"} <= columns
    assert dd["train"].features["weights"].length == 988
    ids = {split: set(dd[split]["model_id"]) for split in dd}
    assert set.union(*ids.values()) == set(range(6)) and sum(map(len, ids.values())) == 6  # each model in one split
    for split in dd:
        df = dd[split].select_columns(["model_id", "epoch", "ggap", "train_acc", "test_acc", "activation"]).to_pandas()
        assert sorted(df.groupby("model_id").epoch.apply(list).explode().tolist()) == sorted([0, 1, 2] * len(ids[split]))
        assert (abs(df.ggap - (df.train_acc - df.test_acc)) < 1e-6).all()
    info = json.loads((tiny_zoo.path / "zoo_config.json").read_text())
    assert info["architecture"] == "cnn-digits" and info["task"] == "digits" and info["config"]["num_models"] == 6
    assert "seed" in info["varied"] and "activation" in info["varied"]
    assert "configs:" in (tiny_zoo.path / "README.md").read_text()


def test_a_row_turns_back_into_the_model_it_recorded(tiny_zoo):
    task = load_task("digits")
    rows = tiny_zoo.dataset["train"].filter(lambda r: r["epoch"] == 2)
    models = [tiny_zoo.build_model(rows[i]) for i in range(len(rows))]
    acc = evaluate_accuracy(models, task, "test")
    torch.testing.assert_close(acc, torch.tensor(rows["test_acc"]), atol=1e-6, rtol=0)
    assert {type(m[2]).__name__ for m in models} == {"Tanh" if a == "tanh" else "ReLU" for a in rows["activation"]}
    assert max(rows["test_acc"]) > 0.5 > min(tiny_zoo.dataset["train"].filter(lambda r: r["epoch"] == 0)["test_acc"])


def test_weights_are_read_as_a_whole_column(tiny_zoo):
    w = tiny_zoo.weights("validation")
    ds = tiny_zoo.dataset["validation"]
    assert w.shape == (len(ds), tiny_zoo.layout.num_weights) and w.dtype == torch.float32
    torch.testing.assert_close(w[-1], torch.tensor(ds[len(ds) - 1]["weights"]))


def test_rebuilding_a_finished_zoo_returns_it_and_another_config_is_refused(tiny_zoo):
    again = build_zoo(TINY, tiny_zoo.path, progress=False)
    assert {k: len(v) for k, v in again.dataset.items()} == {k: len(v) for k, v in tiny_zoo.dataset.items()}
    with pytest.raises(ValueError, match="already holds a different zoo"):
        build_zoo(TINY, tiny_zoo.path, epochs=3, progress=False)


def test_a_killed_build_resumes_without_missing_or_duplicate_rows(tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "population_size": 1, "epochs": 1}))
    out = tmp_path / "zoo"
    cmd = [sys.executable, str(ROOT / "scripts" / "build_zoo.py"), "--config", str(cfg), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(list((out / "progress").glob("chunk-*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted((out / "progress").glob("chunk-*.json"))
    assert 2 <= len(done) < 6, "the build should have been killed part-way"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")}
    with pytest.raises(ValueError, match="unfinished zoo build"):
        load_zoo(out)

    (out / "data" / ".train-00005.parquet.killed.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves
    zoo = build_zoo(cfg, out, progress=False)  # the same command again, in-process
    rows = [(r["model_id"], r["epoch"]) for split in zoo.dataset for r in zoo.dataset[split].select_columns(["model_id", "epoch"])]
    assert sorted(rows) == sorted((m, e) for m in range(6) for e in (0, 1))
    finished_before = [f"-{int(p.stem.split('-')[1]):05d}.parquet" for p in done]
    for name, mtime in before.items():
        if any(name.endswith(s) for s in finished_before):
            assert (out / "data" / name).stat().st_mtime_ns == mtime  # finished chunks were not retrained
    assert not list(out.rglob("*.tmp")) and not (out / "progress").exists()


def test_accelerate_launch_splits_the_build_over_two_processes(tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "epochs": 1, "population_size": 1, "num_models": 4}))
    out = tmp_path / "zoo"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launch, str(ROOT / "scripts" / "build_zoo.py"), "--config", str(cfg), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    zoo = load_zoo(out)
    assert zoo.info["processes"] == 2
    rows = sorted((r["model_id"], r["epoch"]) for s in zoo.dataset for r in zoo.dataset[s].select_columns(["model_id", "epoch"]))
    assert rows == sorted((m, e) for m in range(4) for e in (0, 1))
    assert {int(p.stem.split("-")[1]) for p in (out / "data").glob("*.parquet")} == {0, 1, 2, 3}


def test_presets_and_overrides():
    spec = ZooSpec.from_preset("mnist-hyp")
    assert spec.architecture == "cnn-s" and spec.task == "mnist-5k"
    assert {"activation", "init", "optimizer", "lr", "weight_decay", "dropout"} <= set(spec.varied)
    small = ZooSpec.from_dict({**spec.to_dict(), "num_models": 10})
    assert [m.model_id for m in small.models()] == list(range(10))
    assert ZooSpec.from_preset("mnist-seed").varied == ["seed"]
    assert ZooSpec.from_preset("mnist-seed").checkpoints[0] == 0


@pytest.mark.parametrize("bad,message", [
    ({"architecture": "cnn-xl"}, r"unknown architecture 'cnn-xl'; registered: \[.*'cnn-s'"),
    ({"task": "imagenet"}, r"unknown task 'imagenet'; choose one of \[.*'mnist-5k'"),
    ({"hyperparameters": {"activation": ["swish"]}}, r"unknown activation 'swish'"),
    ({"batchsize": 3}, r"unknown zoo config keys \['batchsize'\]"),
])
def test_bad_specs_name_the_valid_choices(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        build_zoo({**TINY, **bad}, tmp_path / "z", progress=False)


def test_unknown_preset_and_misfitting_architecture(tmp_path):
    with pytest.raises(ValueError, match=r"unknown preset 'mnist-big'; choose one of \[.*'mnist-hyp', 'mnist-seed'"):
        build_zoo("mnist-big", tmp_path / "z")
    with pytest.raises(ValueError, match=r"'cnn-s'.*does not take inputs of shape \[1, 8, 8\] of task 'digits'"):
        build_zoo({**TINY, "architecture": "cnn-s"}, tmp_path / "z2", progress=False)


def test_folders_that_are_not_zoos_are_refused(tmp_path, tiny_zoo):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is not a zoo: it has no zoo_config.json"):
        load_zoo(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "data").symlink_to(tiny_zoo.path / "data")
    info = json.loads((tiny_zoo.path / "zoo_config.json").read_text())
    info["architecture_kwargs"]["in_channels"] = 3  # weights of 1-channel models, an architecture for 3
    (broken / "zoo_config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"zoo_config.json: the zoo's weight layout \(988 weights\) does not fit architecture 'cnn-digits'"):
        load_zoo(broken)


def test_workers_share_the_chunks_and_build_the_same_zoo(tmp_path, tiny_zoo, monkeypatch):
    """workers=2 trains chunks in two processes: the same rows and weights as one process; the plan
    of the first run is kept when a build resumes with another number of workers."""
    from hyperrep_hf.zoo import build as build_module

    config = {**TINY, "population_size": 6}
    two = build_zoo(config, tmp_path / "two", progress=False, workers=2)
    one = build_zoo(config, tmp_path / "one", progress=False)
    assert two.info["chunk_size"] == 3 and one.info["chunk_size"] == 6
    for split in one.dataset:
        a, b = one.metadata(split), two.metadata(split)
        ia, ib = a.sort_values(["model_id", "epoch"]).index, b.sort_values(["model_id", "epoch"]).index
        assert a.loc[ia, ["model_id", "epoch", "test_acc"]].values.tolist() == b.loc[ib, ["model_id", "epoch", "test_acc"]].values.tolist()
        assert torch.equal(one.weights(split)[ia], two.weights(split)[ib])

    # a build begun with 2 workers, stopped after its first chunk, resumes in one process with its plan
    def first_chunk_then_stop(spec, out, todo, num_weights, workers, bar):
        cid, chunk = todo[0]
        build_module._write_chunk(spec, out, cid, chunk, build_module.train_chunk(spec, chunk, load_task(spec.task, **spec.task_kwargs)), num_weights)
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_build_in_processes", first_chunk_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(config, tmp_path / "resumed", progress=False, workers=2)
    original, trained = build_module.train_chunk, []

    def spy(spec, chunk, *args):
        trained.append(len(chunk))
        return original(spec, chunk, *args)

    monkeypatch.setattr(build_module, "train_chunk", spy)
    resumed = build_zoo(config, tmp_path / "resumed", progress=False)  # one process now
    spec = build_module.resolve_spec(config)
    plan = build_module.plan_chunks(spec, spec.models(), 3)
    assert len(plan) > 2 and trained == [len(c) for c in plan[1:]] and resumed.info["chunk_size"] == 3
    for split in one.dataset:
        a, b = one.metadata(split), resumed.metadata(split)
        ia, ib = a.sort_values(["model_id", "epoch"]).index, b.sort_values(["model_id", "epoch"]).index
        assert torch.equal(one.weights(split)[ia], resumed.weights(split)[ib])
    with pytest.raises(ValueError, match="workers must be a positive number of processes"):
        build_zoo(config, tmp_path / "bad", workers=0)
