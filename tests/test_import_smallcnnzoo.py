"""Importing the Small CNN Zoo (Unterthiner et al. 2020): fixture written from the published description."""

import random

import numpy as np
import pandas as pd
import pytest
import torch

from hyperrep_hf.weightspace.permutation import permutation_spec, permute_model
from hyperrep_hf.zoo import build_model, import_zoo

STEPS = [0, 1, 2, 3, 20, 40, 60, 80, 86]
# varname, TF shape: per layer the bias before the kernel (alphabetical TF variable order)
VARIABLES = [
    ("sequential/conv2d/bias:0", (16,)), ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),
    ("sequential/conv2d_1/bias:0", (16,)), ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_2/bias:0", (16,)), ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
    ("sequential/dense/bias:0", (10,)), ("sequential/dense/kernel:0", (16, 10)),
]
ACTIVATION = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh}


def keras_logits(flat, activation, images):
    """The Keras network from its description: 3 x Conv2D(16, 3x3, stride 2, 'valid') + activation,
    global average pooling, Dense(10) logits. flat [4970] in TF layout; images NHWC [B, H, W, 1]."""
    params, x = {}, images.astype(np.float64)
    start = 0
    for name, shape in VARIABLES:
        n = int(np.prod(shape))
        params[name] = flat[start:start + n].reshape(shape).astype(np.float64)
        start += n
    for layer in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = params[f"sequential/{layer}/kernel:0"], params[f"sequential/{layer}/bias:0"]
        out_h, out_w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
        y = np.zeros((x.shape[0], out_h, out_w, 16))
        for i in range(3):
            for j in range(3):
                patch = x[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2, :]  # [B, out_h, out_w, C_in]
                y += patch @ k[i, j]
        x = ACTIVATION[activation](y + b)
    pooled = x.mean(axis=(1, 2))
    return pooled @ params["sequential/dense/kernel:0"] + params["sequential/dense/bias:0"]


def write_zoo(root, index_column=False, nesting="mnist"):
    """A tiny Small CNN Zoo: 6 modeldirs x 9 steps in shuffled row order; model 4 diverged (NaN
    weights), model 5 lacks step 40; activation and dropout vary."""
    rng = np.random.default_rng(0)
    folder = root / nesting
    folder.mkdir(parents=True)
    rows, weights = [], []
    for m in range(6):
        act, dropout = ("relu", "tanh")[m % 2], (0.0, 0.2, 0.5)[m % 3]
        for step in STEPS:
            if m == 5 and step == 40:
                continue
            w = rng.normal(0, 0.3, 4970).astype(np.float32)
            if m == 4 and step >= 20:
                w[100] = np.nan
            weights.append(w)
            rows.append({"modeldir": f"/tmp/zoo/{m * 7 + 3}", "step": step, "test_accuracy": 0.1 + 0.01 * m + 0.001 * step,
                         "test_loss": np.nan if (m == 4 and step >= 20) else 2.3 - 0.01 * step, "train_accuracy": 0.12 + 0.01 * m + 0.001 * step,
                         "train_loss": 2.2 - 0.01 * step, "config.activation": act, "config.b_init": "zeros", "config.dataset": "mnist",
                         "config.dnn_architecture": "cnn", "config.dropout": dropout, "config.epochs": 86, "config.epochs_between_checkpoints": 20,
                         "config.init_std": 0.05 * (m + 1), "config.l2reg": 1e-3 * m, "config.learning_rate": 1e-3 * (m + 1), "config.num_layers": 3,
                         "config.num_units": 16, "config.optimizer": ("adam", "sgd")[m % 2], "config.random_seed": 42,
                         "config.train_fraction": (0.1, 0.25, 0.5, 1.0)[m % 4], "config.w_init": "he_normal"})
    order = rng.permutation(len(rows))  # checkpoints need not be grouped by model
    weights = np.stack(weights)[order]
    metrics = pd.DataFrame(rows).iloc[order].reset_index(drop=True)
    np.save(folder / "weights.npy", weights)
    metrics.to_csv(folder / "metrics.csv.gz", index=index_column, compression="gzip")
    layout, start = [], 0
    for name, shape in VARIABLES:
        n = int(np.prod(shape))
        layout.append({"varname": name, "start_idx": start, "end_idx": start + n, "shape": str(shape)})
        start += n
    pd.DataFrame(layout).to_csv(folder / "layout.csv", index=False)
    return folder, weights, metrics


def test_small_cnn_zoo_rows_reproduce_the_keras_networks(tmp_path):
    folder, weights, metrics = write_zoo(tmp_path / "src")
    zoo = import_zoo("smallcnnzoo", tmp_path / "src", tmp_path / "zoo", progress=False)
    assert zoo.architecture == "cnn-smallzoo" and zoo.num_weights == 4970 and zoo.task == "mnist"
    assert sum(len(d) for d in zoo.dataset.values()) == len(weights) == 53
    assert zoo.info["checkpoint_epochs"] == STEPS
    assert {"activation", "dropout", "lr", "optimizer"} <= set(zoo.info["varied"]) and "l2reg" in zoo.info["varied"]
    assert zoo.extra_columns["l2reg"] == "float64" and zoo.extra_columns["num_units"] == "int64" and zoo.extra_columns["b_init"] == "string"
    images = np.random.default_rng(1).uniform(-1, 1, (3, 28, 28, 1))
    by_key = {(r.modeldir, r.step): i for i, r in enumerate(metrics.itertuples())}
    model_splits = {}
    for split in zoo.dataset:
        for row in zoo.dataset[split]:
            i = by_key[(row["source"], row["epoch"])]
            ref = metrics.iloc[i]
            assert model_splits.setdefault(row["model_id"], split) == split  # every epoch of a model in one split
            assert row["test_acc"] == pytest.approx(ref.test_accuracy) and row["train_loss"] == pytest.approx(ref.train_loss)
            assert row["ggap"] == pytest.approx(ref.train_accuracy - ref.test_accuracy, abs=1e-6)
            assert row["activation"] == ref["config.activation"] and row["dropout"] == ref["config.dropout"]
            assert row["lr"] == pytest.approx(ref["config.learning_rate"]) and row["l2reg"] == pytest.approx(ref["config.l2reg"])
            assert row["init"] == "he_normal" and row["seed"] == 42 and row["train_fraction"] == ref["config.train_fraction"]
            diverged = bool(np.isnan(weights[i]).any())
            assert row["diverged"] == diverged
            if diverged:
                continue
            model = zoo.build_model(row)
            assert type(model[1]).__name__ == ("ReLU" if row["activation"] == "relu" else "Tanh")
            assert model[2].p == pytest.approx(row["dropout"])
            with torch.no_grad():
                got = model(torch.tensor(images.transpose(0, 3, 1, 2), dtype=torch.float32)).numpy()
            np.testing.assert_allclose(got, keras_logits(weights[i], row["activation"], images), rtol=1e-4, atol=1e-4)
    assert len(model_splits) == 6 and set(model_splits.values()) == {"train", "validation", "test"}
    missing = [r for s in zoo.dataset for r in zoo.dataset[s] if r["source"] == "/tmp/zoo/38"]
    assert sorted(r["epoch"] for r in missing) == [s for s in STEPS if s != 40]


def test_the_cnn_smallzoo_permutation_spec_keeps_the_function():
    model = build_model("cnn-smallzoo", activation="tanh").eval()
    spec = permutation_spec(model)
    assert spec.sizes == {"0": 16, "3": 16, "6": 16}
    permuted = permute_model(model, spec.random(generator=torch.Generator().manual_seed(0)), spec)
    x = torch.randn(4, 1, 32, 32)
    assert not torch.equal(permuted[0].weight, model[0].weight)
    torch.testing.assert_close(permuted(x), model(x), atol=1e-5, rtol=1e-5)


def test_the_nfn_split_file_reproduces_nfns_test_set(tmp_path):
    folder, weights, metrics = write_zoo(tmp_path / "src", index_column=True)  # with a leading index column this time
    perm = np.random.default_rng(3).permutation(len(weights))
    pd.DataFrame(perm).to_csv(tmp_path / "split.csv", index=False)  # its header line "0" becomes an index, as in NFN's files
    zoo = import_zoo("smallcnnzoo", folder, tmp_path / "zoo", split_file=tmp_path / "split.csv", progress=False)
    # NFN's reading, spelled out: the header "0" is an index too, final checkpoints kept in file order
    order = np.concatenate([[0], perm])
    final = [i for i in order if metrics.step[i] == 86]
    n = len(final)
    trainval = list(range(int(0.5 * n)))
    random.Random(0).shuffle(trainval)
    cut = int(0.8 * len(trainval))
    nfn = {"test": {metrics.modeldir[final[p]] for p in range(int(0.5 * n), n)},
           "validation": {metrics.modeldir[final[p]] for p in trainval[cut:]},
           "train": {metrics.modeldir[final[p]] for p in trainval[:cut]}}
    got = {s: set(zoo.metadata(s).source) for s in zoo.dataset}
    assert got["test"] == nfn["test"]
    assert got["validation"] == nfn["validation"] - nfn["test"]
    no_final = set(metrics.modeldir) - {metrics.modeldir[i] for i in final}
    assert got["train"] == (nfn["train"] - nfn["test"] - nfn["validation"]) | no_final
    assert zoo.config["split"] == "NFN split file split.csv"


def test_bad_small_cnn_zoo_files_are_named_and_leave_nothing_behind(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no Small CNN Zoo: expected weights.npy, metrics.csv.gz and layout.csv"):
        import_zoo("smallcnnzoo", tmp_path / "empty", tmp_path / "z0", progress=False)

    folder, weights, _ = write_zoo(tmp_path / "a")
    np.save(folder / "weights.npy", weights[:, :4960])
    with pytest.raises(ValueError, match=r"weights.npy: rows have 4960 values, a Small CNN Zoo checkpoint has 4970"):
        import_zoo("smallcnnzoo", folder, tmp_path / "z1", progress=False)

    folder, _, _ = write_zoo(tmp_path / "b")
    layout = pd.read_csv(folder / "layout.csv")
    layout.loc[1, "shape"] = "(3, 3, 1, 8)"
    layout.to_csv(folder / "layout.csv", index=False)
    with pytest.raises(ValueError, match=r"layout.csv: sequential/conv2d/kernel:0 spans columns 16:160 \(144\) but has shape \(3, 3, 1, 8\) \(72 values\): the columns do not add up"):
        import_zoo("smallcnnzoo", folder, tmp_path / "z2", progress=False)

    folder, _, metrics = write_zoo(tmp_path / "c")
    metrics.iloc[:-1].to_csv(folder / "metrics.csv.gz", index=False, compression="gzip")
    with pytest.raises(ValueError, match=r"metrics.csv.gz has 52 rows but weights.npy 53: they must be row-aligned"):
        import_zoo("smallcnnzoo", folder, tmp_path / "z3", progress=False)

    folder, _, metrics = write_zoo(tmp_path / "d")
    metrics.loc[1, ["modeldir", "step"]] = metrics.loc[0, ["modeldir", "step"]].to_numpy()
    metrics.to_csv(folder / "metrics.csv.gz", index=False, compression="gzip")
    with pytest.raises(ValueError, match=r"metrics.csv.gz: two rows for model '/tmp/zoo/\d+' at step \d+"):
        import_zoo("smallcnnzoo", folder, tmp_path / "z4", progress=False)

    folder, _, _ = write_zoo(tmp_path / "e")
    pd.DataFrame([0, 10_000]).to_csv(tmp_path / "bad_split.csv", index=False)
    with pytest.raises(ValueError, match=r"bad_split.csv: indices reach 10000, but the zoo has 53 checkpoints"):
        import_zoo("smallcnnzoo", folder, tmp_path / "z5", split_file=tmp_path / "bad_split.csv", progress=False)
    (tmp_path / "mnist.tar.xz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"mnist.tar.xz is an archive: extract it first .* tar -xf mnist.tar.xz -C zoo"):
        import_zoo("auto", tmp_path / "mnist.tar.xz", tmp_path / "z6", progress=False)
    assert not any((tmp_path / f"z{i}").exists() for i in range(7))
