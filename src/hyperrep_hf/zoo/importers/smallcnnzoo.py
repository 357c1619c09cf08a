"""The Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights").

    weights.npy      [checkpoints, 4970] float: one row per checkpoint (read memory-mapped)
    metrics.csv.gz   one row per checkpoint, row-aligned: modeldir, step (the epoch: 0, 1, 2, 3, 20,
                     40, 60, 80, 86), test/train accuracy and loss, config.* hyperparameters
    layout.csv       varname,start_idx,end_idx,shape: the columns of each TF variable; per layer the
                     bias comes before the kernel; kernels in TF order (conv HWIO, dense (in, out)), C order

The three files may sit anywhere below PATH (the tarballs' nesting folder varies). Rows are stored
in this library's layout (PyTorch OIHW / (out, in)) for architecture `cnn-smallzoo`, built per row
with its own activation and dropout. Models are the `modeldir`s.

`split_file`: the split of Zhou et al.'s NFN, used by every later paper: the file's indices reorder
the checkpoint rows (its first line, a pandas header "0", is read as an index: kept, duplicate
included, as NFN does), the final checkpoints (step 86) are kept in that order, the second half is
test, the first half is shuffled with random.Random(0) and cut 80 / 20 into train / validation.
Every model goes to the split of its final checkpoint (test before validation before train, should
the duplicate index put one model in two); models without a final checkpoint go to train.
"""

from __future__ import annotations

import ast
import math
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd

from ...layout import WeightLayout
from ..architectures import ACTIVATIONS, build_model
from ..dataset import STANDARD_COLUMNS
from .writer import column_type, model_splits, write_zoo

FILES = ("weights.npy", "metrics.csv.gz", "layout.csv")
EXPECTS = "weights.npy, metrics.csv.gz and layout.csv (the Small CNN Zoo tarball's files) in one folder"
FINAL_STEP = 86
METRIC_COLUMNS = {"test_accuracy": "test_acc", "train_accuracy": "train_acc", "test_loss": "test_loss", "train_loss": "train_loss"}
# config.* columns -> standard zoo columns; the other config.* columns become extra columns
CONFIG_COLUMNS = {
    "config.activation": "activation",
    "config.w_init": "init",
    "config.optimizer": "optimizer",
    "config.learning_rate": "lr",
    "config.dropout": "dropout",
    "config.random_seed": "seed",
}


def find_files(root: Path) -> Path:
    """The folder below `root` that holds the three files."""
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist: give the folder of the extracted Small CNN Zoo tarball ({EXPECTS})")
    if root.is_file() and root.name.lower().endswith((".tar.xz", ".txz", ".tar", ".tar.gz", ".tgz")):
        raise ValueError(
            f"{root} is an archive: extract it first (weights.npy is read memory-mapped, which needs it on disk), "
            f"e.g. `mkdir zoo && tar -xf {root.name} -C zoo`, then import the folder"
        )
    if root.is_dir() and all((root / f).is_file() for f in FILES):
        return root
    found = sorted(p.parent for p in root.rglob("weights.npy")) if root.is_dir() else []
    for folder in found:
        if all((folder / f).is_file() for f in FILES):
            return folder
    where = f" ({found[0]} lacks {[f for f in FILES if not (found[0] / f).is_file()]})" if found else ""
    raise ValueError(f"{root} holds no Small CNN Zoo{where}: expected {EXPECTS}")


def read_layout(path: Path, num_columns: int) -> list[dict]:
    """layout.csv -> layers in column order: [{"name", "bias": (start, end, shape), "kernel": (...)}]."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in ("varname", "start_idx", "end_idx", "shape") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}: expected varname,start_idx,end_idx,shape")
    variables, end = [], 0
    for r in table.sort_values("start_idx").itertuples(index=False):
        try:
            shape = tuple(int(s) for s in ast.literal_eval(str(r.shape)))
        except (ValueError, SyntaxError, TypeError) as err:
            raise ValueError(f"{path}: {r.varname}: shape {r.shape!r} is not a tuple of ints like (3, 3, 1, 16)") from err
        start, stop = int(r.start_idx), int(r.end_idx)
        if start != end:
            raise ValueError(f"{path}: {r.varname} starts at column {start}, but the variables before it end at {end}: the columns do not add up")
        if stop - start != math.prod(shape):
            raise ValueError(f"{path}: {r.varname} spans columns {start}:{stop} ({stop - start}) but has shape {shape} ({math.prod(shape)} values): the columns do not add up")
        variables.append((str(r.varname), start, stop, shape))
        end = stop
    if end != num_columns:
        raise ValueError(f"{path} lays out {end} columns, but weights.npy rows have {num_columns}: the columns do not add up (is it the layout of another zoo?)")
    layers: dict[str, dict] = {}
    for name, start, stop, shape in variables:
        layer, _, kind = name.rpartition("/")
        kind = kind.split(":")[0]
        if kind not in ("kernel", "bias"):
            raise ValueError(f"{path}: variable {name!r} is neither a kernel nor a bias")
        layers.setdefault(layer, {"name": layer})[kind] = (start, stop, shape)
    return list(layers.values())


def column_index(layers: list[dict], layout: WeightLayout, where: Path) -> np.ndarray:
    """idx [P] with ours = theirs[..., idx]: TF HWIO / (in, out) kernels to PyTorch OIHW / (out, in)."""
    ours = [(layout.entries[i], layout.entries[i + 1]) for i in range(0, len(layout.entries), 2)]
    if len(ours) != len(layers):
        raise ValueError(f"{where} has {len(layers)} layers, cnn-smallzoo {len(ours)}")
    parts = []
    for layer, (weight, bias) in zip(layers, ours):
        if "kernel" not in layer or "bias" not in layer:
            raise ValueError(f"{where}: layer {layer['name']!r} lacks its {'kernel' if 'kernel' not in layer else 'bias'}")
        start, stop, shape = layer["kernel"]
        kernel = np.arange(start, stop).reshape(shape)
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T  # HWIO -> OIHW, (in, out) -> (out, in)
        if kernel.shape != weight.shape:
            raise ValueError(f"{where}: {layer['name']}/kernel {shape} does not fit cnn-smallzoo's {weight.name} {list(weight.shape)}")
        start, stop, shape = layer["bias"]
        if tuple(shape) != bias.shape:
            raise ValueError(f"{where}: {layer['name']}/bias {shape} does not fit cnn-smallzoo's {bias.name} {list(bias.shape)}")
        parts += [kernel.reshape(-1), np.arange(start, stop)]
    return np.concatenate(parts)


def read_metrics(path: Path, num_rows: int) -> pd.DataFrame:
    try:
        metrics = pd.read_csv(path)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable gzip CSV ({err})") from err
    metrics = metrics.drop(columns=[c for c in metrics.columns if str(c).startswith("Unnamed:")])  # a leading pandas index, if written
    missing = [c for c in ("modeldir", "step", *METRIC_COLUMNS) if c not in metrics.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}: expected modeldir, step, test_accuracy, train_accuracy, test_loss, train_loss, config.*")
    if len(metrics) != num_rows:
        raise ValueError(f"{path} has {len(metrics)} rows but weights.npy {num_rows}: they must be row-aligned (one row per checkpoint)")
    return metrics.reset_index(drop=True)


def nfn_splits(split_file: Path, metrics: pd.DataFrame, models: list[str]) -> list[str]:
    """Per model, its split under NFN's split file (see the module docstring)."""
    try:
        order = pd.read_csv(split_file, header=None).values.flatten()
    except (OSError, ValueError) as err:
        raise ValueError(f"{split_file}: not a readable split file ({err}); expected one checkpoint index per line") from err
    try:
        order = order.astype(np.int64)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{split_file}: holds non-integer entries; expected one checkpoint index per line (NFN's *_split.csv)") from err
    if len(order) and (order.min() < 0 or order.max() >= len(metrics)):
        raise ValueError(f"{split_file}: indices reach {order.max()}, but the zoo has {len(metrics)} checkpoints: is it the split of another dataset?")
    steps = metrics["step"].to_numpy()[order]
    final = order[steps == FINAL_STEP]
    n = len(final)
    test = list(range(int(0.5 * n), n))
    trainval = list(range(int(0.5 * n)))
    cut = int(0.8 * len(trainval))
    random.Random(0).shuffle(trainval)
    split_of_position = {**{p: "train" for p in trainval[:cut]}, **{p: "validation" for p in trainval[cut:]}, **{p: "test" for p in test}}
    rank = {"test": 0, "validation": 1, "train": 2}
    index = {m: i for i, m in enumerate(models)}
    out = ["train"] * len(models)
    assigned = [False] * len(models)
    modeldirs = metrics["modeldir"].astype(str).to_numpy()
    for pos, row in enumerate(final):
        i, split = index[modeldirs[row]], split_of_position[pos]
        if not assigned[i] or rank[split] < rank[out[i]]:
            out[i], assigned[i] = split, True
    return out


def import_smallcnnzoo(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    split_file: str | os.PathLike | None = None,
    task: str | None = None,
    seed: int = 0,
    models_per_shard: int = 256,
    progress: bool = True,
):
    """Convert the Small CNN Zoo at `path` into a zoo dataset at `out_dir` (architecture cnn-smallzoo); returns it loaded."""
    folder = find_files(Path(path))
    weights_file = folder / "weights.npy"
    try:
        weights = np.load(weights_file, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"{weights_file}: not a readable .npy array ({err})") from err
    if weights.ndim != 2 or not np.issubdtype(weights.dtype, np.floating):
        raise ValueError(f"{weights_file}: expected a float matrix [checkpoints, 4970], got {weights.dtype} {list(weights.shape)}")
    layout = WeightLayout.from_state_dict(build_model("cnn-smallzoo").state_dict())
    if weights.shape[1] != layout.num_weights:
        raise ValueError(f"{weights_file}: rows have {weights.shape[1]} values, a Small CNN Zoo checkpoint has {layout.num_weights}")
    idx = column_index(read_layout(folder / "layout.csv", weights.shape[1]), layout, folder / "layout.csv")
    metrics = read_metrics(folder / "metrics.csv.gz", len(weights))
    dup = metrics.duplicated(["modeldir", "step"])
    if dup.any():
        r = metrics[dup].iloc[0]
        raise ValueError(f"{folder / 'metrics.csv.gz'}: two rows for model {r.modeldir!r} at step {r.step}; each (modeldir, step) must appear once")
    bad = sorted({str(a) for a in metrics.get("config.activation", pd.Series(dtype=str)).dropna()} - set(ACTIVATIONS))
    if bad:
        raise ValueError(f"{folder / 'metrics.csv.gz'}: activation(s) {bad} have no PyTorch counterpart here (known: {sorted(ACTIVATIONS)})")

    groups = metrics.groupby("modeldir", sort=False).indices  # modeldir -> its checkpoint rows
    models = list(groups)
    if split_file is not None:
        splits = nfn_splits(Path(split_file), metrics, [str(m) for m in models])
    else:
        splits = model_splits(len(models), seed, str(folder))
    extras = {c: c.removeprefix("config.") for c in metrics.columns if c.startswith("config.") and c not in CONFIG_COLUMNS}
    extras = {c: col for c, col in extras.items() if col not in STANDARD_COLUMNS and col != "source"}
    extra_types = {col: column_type(metrics[c]) for c, col in extras.items()}
    records = {c: metrics[c].to_numpy() for c in metrics.columns}  # row lookups without pandas overhead

    def read_model(modeldir) -> list[dict]:
        rows = sorted(groups[modeldir], key=lambda r: records["step"][r])
        block = np.asarray(weights[rows], dtype=np.float32)[:, idx]  # only this model's rows are read from disk
        out = []
        for k, r in enumerate(rows):
            row = {"epoch": int(records["step"][r]), "weights": block[k], "source": str(modeldir)}
            row.update({ours: records[theirs][r] for theirs, ours in METRIC_COLUMNS.items()})
            row.update({ours: records[theirs][r] for theirs, ours in CONFIG_COLUMNS.items() if theirs in records})
            row.update({col: records[c][r] for c, col in extras.items()})
            out.append(row)
        return out

    info = {
        "name": folder.name,
        "architecture": "cnn-smallzoo",
        "architecture_kwargs": {"in_channels": 1, "num_classes": 10},
        "task": task or (str(metrics["config.dataset"].iloc[0]) if "config.dataset" in metrics else None),
        "config": {
            "source": "smallcnnzoo",
            "path": str(folder.resolve()),
            "split": f"NFN split file {Path(split_file).name}" if split_file is not None else f"by model, seed {seed}",
            "description": f"Imported from the Small CNN Zoo (Unterthiner et al. 2020) in {folder}.",
        },
    }
    fingerprint = {"format": "smallcnnzoo", "path": str(folder.resolve()), "split_file": str(split_file), "seed": seed, "models_per_shard": models_per_shard}
    return write_zoo(
        out_dir, info, models, splits, read_model, layout=layout, extra_columns={"source": "string", **extra_types},
        fingerprint=fingerprint, models_per_shard=models_per_shard, progress=progress, desc="import smallcnnzoo",
    )


__all__ = ["import_smallcnnzoo"]
