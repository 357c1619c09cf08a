"""Model Zoos import, hardened: archives, Hub paths, config.json, result offsets, dropout-shifted keys, ResNet-18."""

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from hyperrep_hf.zoo import build_model, import_zoo, num_parameters

# published CNN-s state_dict indices (def_net.py): Dropout modules exist only when dropout > 0
CNN_S_KEYS = {False: (0, 3, 6, 9, 11), True: (0, 4, 8, 11, 14)}


def published_cnn_s(model, dropout):
    """Our cnn-s tensors under the published names module_list.{i}.{weight,bias}."""
    tensors = list(model.state_dict().values())
    out = {}
    for k, idx in enumerate(CNN_S_KEYS[dropout > 0]):
        out[f"module_list.{idx}.weight"], out[f"module_list.{idx}.bias"] = tensors[2 * k].clone(), tensors[2 * k + 1].clone()
    return out


def write_trial(root, i, epochs=3, nlin="tanh", dropout=0.0, offset=1, config_name="params.json", padded=True,
                skip_epoch=None, diverge_at=None):
    """A Ray Tune trial folder: checkpoint N is the model after epoch N (0: initial), its result line has
    training_iteration N + offset; every checkpoint folder also holds an `optimizer` file."""
    trial = root / f"NN_tune_trainable_ab{i:03d}_{i:05d}_{i}_seed={i},nlin={nlin}_2021-09-25_11-43-53"
    trial.mkdir(parents=True)
    params = {"model::type": "CNN", "model::channels_in": 1, "model::o_dim": 10, "model::nlin": nlin, "model::dropout": dropout,
              "model::init_type": "kaiming_uniform", "model::use_bias": True, "optim::optimizer": "adam", "optim::lr": 1e-3 * (i + 1),
              "optim::wd": 1e-4 * i, "training::batchsize": 32 * (1 + i % 2), "training::epochs_train": epochs, "seed": i, "cuda": False}
    (trial / config_name).write_text(json.dumps(params))
    torch.manual_seed(i)
    model = build_model("cnn-s", activation=nlin)
    states, lines = {}, []
    for epoch in range(epochs + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.05)
            if diverge_at is not None and epoch >= diverge_at:
                model[0].weight.fill_(float("nan"))
        lines.append({"training_iteration": epoch + offset, "train_acc": 0.1 + 0.1 * epoch, "test_acc": 0.1 + 0.05 * epoch,
                      "train_loss": float("nan") if diverge_at is not None and epoch >= diverge_at else 2.0 - 0.1 * epoch,
                      "test_loss": 2.1, "config": params, "time_this_iter_s": 1.0})
        if epoch == skip_epoch:
            continue
        folder = trial / (f"checkpoint_{epoch:06d}" if padded else f"checkpoint_{epoch}")
        folder.mkdir()
        torch.save(published_cnn_s(model, dropout), folder / "checkpoints")
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer")
        states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
    (trial / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (trial / "progress.csv").write_text("training_iteration\n1\n")
    return trial.name, states, params


def write_zoo(root, n=4, **kw):
    """Trials with activation and dropout varying (so keys shift within the zoo), trial 1 diverging, trial 2 missing epoch 2."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model::type": "CNN", "seed": "tune.grid_search([1, 2])"}))  # the grid config
    (root / "readme.md").write_text("")
    out = {}
    for i in range(n):
        name, states, params = write_trial(root, i, nlin=("tanh", "relu")[i % 2], dropout=(0.0, 0.5)[(i // 2) % 2],
                                           diverge_at=2 if i == 1 else None, skip_epoch=2 if i == 2 else None, **kw)
        out[name] = (states, params)
    return out


def check_zoo(zoo, trials, offset=1):
    x = torch.randn(2, 1, 28, 28)
    rows = 0
    for split in zoo.dataset:
        for row in zoo.dataset[split]:
            states, params = trials[row["source"].rsplit("/", 1)[-1]]  # in an archive: the member path of the trial
            expected = states[row["epoch"]]
            got = zoo.state_dict(row)
            for name, t in expected.items():
                torch.testing.assert_close(got[name], t, equal_nan=True)
            assert row["activation"] == params["model::nlin"] and row["dropout"] == params["model::dropout"]
            assert row["lr"] == pytest.approx(params["optim::lr"]) and row["training_batchsize"] == params["training::batchsize"]
            assert row["train_acc"] == pytest.approx(0.1 + 0.1 * row["epoch"])  # the line of this epoch, offset undone
            assert row["diverged"] == (params["seed"] == 1 and row["epoch"] >= 2)
            if not row["diverged"]:
                ref = build_model("cnn-s", activation=params["model::nlin"]).eval()
                ref.load_state_dict(expected)
                torch.testing.assert_close(zoo.build_model(row)(x), ref(x))
            rows += 1
    assert rows == sum(len(s) for s, _ in trials.values())
    assert zoo.config["result_offset"] == offset


def test_dropout_shifted_keys_config_json_and_unpadded_checkpoints(tmp_path):
    trials = write_zoo(tmp_path / "src", config_name="config.json", padded=False, offset=0)
    zoo = import_zoo("modelzoos", tmp_path / "src", tmp_path / "zoo", progress=False)
    assert zoo.architecture == "cnn-s" and zoo.architecture_kwargs == {"in_channels": 1, "num_classes": 10}
    check_zoo(zoo, trials, offset=0)
    assert {"activation", "dropout", "lr", "weight_decay", "seed", "training_batchsize"} <= set(zoo.info["varied"])


@pytest.mark.parametrize("archive", ["tar", "tar.gz", "zip"])
def test_archives_are_read_member_by_member(tmp_path, archive):
    trials = write_zoo(tmp_path / "zoo_cifar" / "tune_zoo_mnist")
    path = tmp_path / f"zoo.{archive}"
    if archive == "zip":
        with zipfile.ZipFile(path, "w") as z:
            for f in sorted((tmp_path / "zoo_cifar").rglob("*")):
                z.write(f, f.relative_to(tmp_path / "zoo_cifar").as_posix())
    else:
        with tarfile.open(path, "w:gz" if archive == "tar.gz" else "w") as t:
            t.add(tmp_path / "zoo_cifar" / "tune_zoo_mnist", arcname="tune_zoo_mnist")
    shutil.rmtree(tmp_path / "zoo_cifar")  # nothing unpacked anywhere: the archive alone
    zoo = import_zoo("modelzoos", path, tmp_path / "zoo", progress=False)
    check_zoo(zoo, trials)
    assert not list(tmp_path.glob("**/checkpoints"))


def test_a_path_inside_a_hub_dataset_repo_downloads_only_that_path(tmp_path, hub_server, hub_repo_id):
    from huggingface_hub import HfApi

    trials = write_zoo(tmp_path / "repo" / "zoos" / "mnist_small", n=3)
    (tmp_path / "repo" / "other").mkdir()
    (tmp_path / "repo" / "other" / "unrelated.bin").write_bytes(b"x" * 1000)
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_folder(folder_path=tmp_path / "repo", repo_id=hub_repo_id, repo_type="dataset")
    zoo = import_zoo("modelzoos", f"hf://datasets/{hub_repo_id}/zoos/mnist_small", tmp_path / "z1", progress=False)
    check_zoo(zoo, trials)
    assert zoo.config["path"] == f"hf://datasets/{hub_repo_id}/zoos/mnist_small"
    zoo = import_zoo("modelzoos", None, tmp_path / "z2", repo=hub_repo_id, path_in_repo="zoos/mnist_small", progress=False)
    assert sum(len(d) for d in zoo.dataset.values()) == sum(len(s) for s, _ in trials.values())
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE) / f"datasets--{hub_repo_id.replace('/', '--')}"
    downloaded = [p.name for p in cache.rglob("*") if p.is_file()]
    assert "unrelated.bin" not in downloaded and "checkpoints" in downloaded


def test_a_trial_whose_result_offset_disagrees_is_named(tmp_path):
    write_zoo(tmp_path / "src", n=3, offset=1)
    name, _, _ = write_trial(tmp_path / "src", 7, offset=0)
    with pytest.raises(ValueError, match=rf"{name}/result.json: its training_iteration values fit checkpoint numbers with offset \[0\], but the trials before it need offset \[1\]"):
        import_zoo("modelzoos", tmp_path / "src", tmp_path / "zoo", progress=False)
    assert not (tmp_path / "zoo").exists()


def test_resnet18_zoos_with_torchvision_keys_and_batchnorm_statistics(tmp_path):
    """Published ResNet-18: torchvision names (downsample, fc, num_batches_tracked), conv1 3x3 stride 1, no max-pool.
    Built at width 16 to stay fast; the key order and the layers are those of width 64."""
    states = {}
    for i in range(3):
        trial = tmp_path / "src" / f"NN_tune_trainable_{i}"
        (trial / "checkpoint_000060").mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps({"model::type": "Resnet18", "model::channels_in": 3, "model::o_dim": 10, "seed": i}))
        (trial / "result.json").write_text(json.dumps({"training_iteration": 60, "test_acc": 0.9}) + "\n")
        torch.manual_seed(i)
        model = build_model("resnet18", width=16)
        sd = model.state_dict()
        for k in sd:
            if "running_" in k:
                sd[k].uniform_(0.5, 1.5)
        published = {}
        for k, v in sd.items():
            published[k.replace("shortcut", "downsample").replace("linear", "fc")] = v
            if k.endswith("running_var"):
                published[k.replace("running_var", "num_batches_tracked").replace("shortcut", "downsample")] = torch.tensor(100)
        torch.save(published, trial / "checkpoint_000060" / "checkpoints")
        states[trial.name] = sd
    zoo = import_zoo("modelzoos", tmp_path / "src", tmp_path / "zoo", architecture_kwargs={"width": 16}, progress=False)
    assert zoo.architecture == "resnet18" and zoo.architecture_kwargs == {"width": 16, "in_channels": 3, "num_classes": 10}
    assert num_parameters(build_model("resnet18")) == 11_173_962  # the published size at width 64
    x = torch.randn(2, 3, 32, 32)
    for split in zoo.dataset:
        for source, flat in zip(zoo.metadata(split).source, zoo.weights(split)):
            ref = build_model("resnet18", width=16).eval()
            ref.load_state_dict(states[source])
            torch.testing.assert_close(zoo.build_model(flat)(x), ref(x))


def test_pickled_datasets_are_refused_without_unpickling(tmp_path):
    torch.save({"trainset": [1, 2]}, tmp_path / "dataset.pt")
    with pytest.raises(ValueError, match=r"dataset.pt is a preprocessed Model Zoos dataset .* never unpickles it. Download the raw zoo"):
        import_zoo("modelzoos", tmp_path / "dataset.pt", tmp_path / "zoo", progress=False)
    with pytest.raises(ValueError, match=r"holds no trial folders \(it has dataset.pt: a pickled dataset, which is never loaded\)"):
        import_zoo("modelzoos", tmp_path, tmp_path / "zoo", progress=False)
