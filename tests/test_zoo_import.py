"""Importing zoos in the published Model Zoos layout (Ray Tune trial folders)."""

import json

import pytest
import torch

from hyperrep_hf.zoo import build_model, import_modelzoos


def _write_trial(root, i, epochs=2, nlin="tanh"):
    """A trial folder as the Model Zoos publish them: module_list.N.* names, one result line per epoch."""
    trial = root / f"NN_tune_trainable_{i:05d}_seed={i}"
    trial.mkdir(parents=True)
    params = {"model::type": "CNN", "model::channels_in": 1, "model::nlin": nlin, "model::dropout": 0.0,
              "model::init_type": "uniform", "optim::optimizer": "adam", "optim::lr": 3e-4, "optim::wd": 0.0, "seed": i}
    (trial / "params.json").write_text(json.dumps(params))
    torch.manual_seed(i)
    model = build_model("cnn-s", activation=nlin)
    states = []
    for epoch in range(epochs + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * epoch)
        sd = {f"module_list.{k}": v.clone() for k, v in model.state_dict().items()}
        (trial / f"checkpoint_{epoch:06d}").mkdir()
        torch.save(sd, trial / f"checkpoint_{epoch:06d}" / "checkpoints")
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    lines = [json.dumps({"training_iteration": e, "train_acc": 0.1 + 0.1 * e, "test_acc": 0.1 + 0.08 * e, "val_acc": 0.1,
                         "train_loss": 2.3 - 0.1 * e, "test_loss": 2.3}) for e in range(epochs + 1)]
    (trial / "result.json").write_text("\n".join(lines) + "\n")
    return trial, states


def test_model_zoos_trials_become_a_zoo_dataset(tmp_path):
    states = {i: _write_trial(tmp_path / "src", i, nlin="tanh" if i % 2 else "relu")[1] for i in range(4)}
    zoo = import_modelzoos(tmp_path / "src", tmp_path / "zoo", progress=False)
    assert zoo.architecture == "cnn-s" and zoo.layout.num_weights == 2464
    assert sum(len(d) for d in zoo.dataset.values()) == 4 * 3
    assert set(zoo.info["varied"]) == {"seed", "activation"}
    for split in zoo.dataset:
        for row in zoo.dataset[split]:
            expected = states[row["model_id"]][row["epoch"]]
            model = zoo.build_model(row)
            for name, t in model.state_dict().items():
                torch.testing.assert_close(t, expected[name])
            assert row["activation"] == ("tanh" if row["model_id"] % 2 else "relu")
            assert type(model[2]).__name__ == ("Tanh" if row["activation"] == "tanh" else "ReLU")
            assert row["train_acc"] == pytest.approx(0.1 + 0.1 * row["epoch"])
            assert row["ggap"] == pytest.approx(0.02 * row["epoch"], abs=1e-6)


def test_malformed_model_zoos_folders_name_the_file(tmp_path):
    trial, _ = _write_trial(tmp_path / "a", 0)
    with open(trial / "result.json", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"result.json, line 4: not a JSON line"):
        import_modelzoos(tmp_path / "a", tmp_path / "za", progress=False)

    trial, _ = _write_trial(tmp_path / "b", 0)
    (trial / "checkpoint_000001" / "checkpoints").unlink()
    with pytest.raises(ValueError, match=r"checkpoint_000001/checkpoints is missing"):
        import_modelzoos(tmp_path / "b", tmp_path / "zb", progress=False)

    trial, _ = _write_trial(tmp_path / "c", 0)
    (trial / "checkpoint_000002" / "checkpoints").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint_000002/checkpoints: not a readable torch checkpoint"):
        import_modelzoos(tmp_path / "c", tmp_path / "zc", progress=False)

    trial, _ = _write_trial(tmp_path / "d", 0)
    torch.save(build_model("cnn-l").state_dict(), trial / "checkpoint_000001" / "checkpoints")
    with pytest.raises(ValueError, match=r"checkpoint_000001/checkpoints: does not fit cnn-s .*: tensor 0 of the model, '0.weight' of shape \[16, 3, 3, 3\], differs from the layout, which expects '0.weight' of shape \[8, 1, 5, 5\]"):
        import_modelzoos(tmp_path / "d", tmp_path / "zd", progress=False)
    assert not (tmp_path / "zd").exists()  # a failed import leaves no half-written zoo

    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match=r"holds no trial folders: expected <trial>/params.json"):
        import_modelzoos(tmp_path / "e", tmp_path / "ze", progress=False)
