"""A zoo on disk (and on the Hub): parquet shards, a JSON sidecar and a dataset card.

    DIR/data/{split}-{chunk:05d}.parquet   one row per (model, epoch); splits train/validation/test
    DIR/zoo_config.json                    architecture + kwargs, WeightLayout, task, generating config
    DIR/README.md                          DatasetCard; its YAML `configs` name the data files

`datasets.load_dataset(DIR)` (or the Hub repo id) loads the rows; `load_zoo` adds the layout and
architecture, so a row turns back into a working model in one call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets import Features, List, Value
from torch import nn

from ..files import atomic_save
from ..layout import WeightLayout
from .architectures import (
    ARCHITECTURES,
    architecture_kwargs_for_row,
    build_model,
    is_builder_reference,
)

CONFIG_NAME = "zoo_config.json"
FORMAT = "hyperrep-zoo"
METRICS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "ggap")
HYPERPARAMETER_TYPES = {
    "seed": "int64",
    "activation": "string",
    "init": "string",
    "optimizer": "string",
    "lr": "float64",
    "weight_decay": "float64",
    "dropout": "float64",
    "momentum": "float64",
}
STANDARD_COLUMNS = ("model_id", "epoch", "weights", *METRICS, "architecture", "diverged", *HYPERPARAMETER_TYPES)
# Types an extra column may have (zoo_config.json "extra_columns": name -> type).
EXTRA_COLUMN_TYPES = ("string", "int64", "float64", "bool")


def check_extra_columns(extra_columns: Mapping[str, str] | None) -> dict[str, str]:
    """Validate extra columns (name -> one of EXTRA_COLUMN_TYPES) beyond the standard zoo columns."""
    extra = dict(extra_columns or {})
    for name, typ in extra.items():
        if name in STANDARD_COLUMNS:
            raise ValueError(f"extra column {name!r} is a standard zoo column; give it another name")
        if typ not in EXTRA_COLUMN_TYPES:
            raise ValueError(f"extra column {name!r} has type {typ!r}; choose one of {list(EXTRA_COLUMN_TYPES)}")
    return extra


def zoo_features(num_weights: int, extra_columns: Mapping[str, str] | None = None) -> Features:
    """The columns of every zoo dataset, then the zoo's extra columns (e.g. an import's `source`)."""
    cols = {"model_id": Value("int64"), "epoch": Value("int64"), "weights": List(Value("float32"), length=num_weights)}
    cols.update({m: Value("float32") for m in METRICS})
    cols.update({"architecture": Value("string"), "diverged": Value("bool")})
    cols.update({k: Value(t) for k, t in HYPERPARAMETER_TYPES.items()})
    cols.update({k: Value(t) for k, t in check_extra_columns(extra_columns).items()})
    return Features(cols)


def write_shard(path: Path, rows: Mapping[str, list | np.ndarray], num_weights: int, extra_columns: Mapping[str, str] | None = None) -> int:
    """Write rows (column -> values; "weights" as [rows, P] float32) as one parquet shard, atomically.

    The schema carries datasets' feature metadata, so load_dataset reads `weights` as
    List(float32, length=P) and the extra columns with their declared types. Returns the number of rows.
    """
    features = zoo_features(num_weights, extra_columns)
    weights = np.ascontiguousarray(rows["weights"], dtype=np.float32).reshape(-1, num_weights)
    arrays = {}
    for name, feature in features.items():
        if name == "weights":
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1)), num_weights)
        else:
            arrays[name] = pa.array(list(rows[name]), type=feature.pa_type)
    table = pa.table(arrays, schema=features.arrow_schema)
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features.to_dict()}})})
    # keep row groups near 32 MB so readers and the Hub viewer can stream them
    atomic_save(path, lambda tmp: pq.write_table(table, tmp, row_group_size=max(1, (32 << 20) // (4 * num_weights))))
    return len(weights)


def data_files_config() -> list[dict]:
    return [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in ("train", "validation", "test")]}]


class Zoo:
    """A loaded zoo: `dataset` (DatasetDict), `layout`, `architecture` (None for a zoo imported
    without one: its rows are state_dicts only), `architecture_kwargs`, `task`, `config` (the
    generating config), `extra_columns` (name -> type beyond the standard columns) and `info`
    (the whole sidecar)."""

    def __init__(self, path: Path, info: dict, dataset):
        self.path, self.info, self.dataset = Path(path), info, dataset
        self.layout = WeightLayout.from_dict(info["layout"])
        self.architecture = info["architecture"]
        self.architecture_kwargs = dict(info.get("architecture_kwargs") or {})
        self.task = info.get("task")
        self.config = info.get("config", {})
        self.extra_columns = dict(info.get("extra_columns") or {})

    @property
    def num_weights(self) -> int:
        return self.layout.num_weights

    def weights(self, split: str = "train") -> torch.Tensor:
        """All weight vectors of a split as one tensor [rows, P], read as a whole column."""
        ds = self.dataset[split]
        column = ds.with_format("arrow")[:]["weights"]  # zero-copy view of the memory-mapped table
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        parts = [c.flatten().to_numpy(zero_copy_only=False) for c in chunks]
        values = np.concatenate(parts) if len(parts) != 1 else parts[0].copy()  # one copy into torch-owned memory
        return torch.from_numpy(values.reshape(len(ds), self.num_weights))

    def metadata(self, split: str = "train", columns=None):
        """The non-weight columns of a split as a pandas DataFrame (cheap: weights are not read)."""
        ds = self.dataset[split]
        columns = columns or [c for c in ds.column_names if c != "weights"]
        return ds.select_columns(columns).to_pandas()

    def _flat(self, weights_row_or_flat) -> torch.Tensor:
        flat = weights_row_or_flat["weights"] if isinstance(weights_row_or_flat, Mapping) else weights_row_or_flat
        flat = torch.as_tensor(np.asarray(flat, dtype=np.float32)) if not torch.is_tensor(flat) else flat.float()
        if flat.dim() != 1 or flat.numel() != self.num_weights:
            raise ValueError(f"expected {self.num_weights} weights for {self.architecture or 'this zoo'}, got shape {list(flat.shape)}")
        return flat

    def state_dict(self, weights_row_or_flat) -> dict[str, torch.Tensor]:
        """A zoo row or a flat vector [P] -> the state_dict it stores (float entries, layout names)."""
        return self.layout.unflatten(self._flat(weights_row_or_flat))

    def build_model(self, weights_row_or_flat) -> nn.Module:
        """A zoo row (dict with `weights` and hyperparameters) or a flat vector [P] -> nn.Module in eval mode."""
        if self.architecture is None:
            raise ValueError(
                f"{self.path} was imported without an architecture: its rows are state_dicts (zoo.state_dict(row)); "
                "import it again with --architecture NAME (registered) or --architecture package.module:builder to get buildable rows"
            )
        row = weights_row_or_flat if isinstance(weights_row_or_flat, Mapping) else None
        flat = self._flat(weights_row_or_flat)
        model = build_model(self.architecture, **architecture_kwargs_for_row(self.architecture, self.architecture_kwargs, row))
        if is_builder_reference(self.architecture):  # not checked at load time: the builder is imported only here
            check_layout_fits(self.info, self.path / CONFIG_NAME, model)
        model.load_state_dict(self.layout.unflatten(flat), strict=False)
        return model.eval()

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self.dataset.items()}
        return f"Zoo({self.architecture}, task={self.task}, P={self.num_weights}, rows={sizes})"


def read_zoo_info(path: Path) -> dict:
    cfg = path / CONFIG_NAME
    if not cfg.is_file():
        raise ValueError(f"{path} is not a zoo: it has no {CONFIG_NAME} (build one with `hyperrep zoo build` or import one with `hyperrep zoo import`)")
    try:
        info = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg} is not valid JSON: {err}") from err
    missing = [k for k in ("architecture", "architecture_kwargs", "layout") if k not in info]
    if missing:
        raise ValueError(f"{cfg} lacks {missing}; it is not a zoo sidecar")
    return info


def check_layout_fits(info: dict, where: Path, model: nn.Module | None = None) -> None:
    """A zoo whose weights do not fit its architecture is refused here, not in a deep torch call."""
    layout = WeightLayout.from_dict(info["layout"])
    if model is None:
        if info["architecture"] not in ARCHITECTURES:
            raise ValueError(f"{where}: unknown architecture {info['architecture']!r}; registered: {sorted(ARCHITECTURES)}")
        model = build_model(info["architecture"], **info["architecture_kwargs"])
    expected = WeightLayout.from_state_dict(model.state_dict())
    if [e.shape for e in layout.entries] != [e.shape for e in expected.entries]:
        raise ValueError(
            f"{where}: the zoo's weight layout ({layout.num_weights} weights) does not fit architecture "
            f"{info['architecture']!r} with {info['architecture_kwargs']} ({expected.num_weights} weights)"
        )


def load_zoo(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Zoo:
    """Load a zoo from a local folder or a Hub dataset repo id (downloaded with snapshot_download)."""
    import datasets

    path = Path(path_or_repo_id)
    if not path.exists():
        if str(path_or_repo_id).count("/") != 1 or str(path_or_repo_id).startswith((".", "/")):
            raise FileNotFoundError(f"{path_or_repo_id} is neither a zoo folder nor a Hub repo id (org/name)")
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(path_or_repo_id), repo_type="dataset", revision=revision))
    info = read_zoo_info(path)
    if not info.get("complete", True):
        raise ValueError(f"{path} holds an unfinished zoo build; run the same build command again to finish it")
    check_extra_columns(info.get("extra_columns"))
    # a zoo without an architecture holds state_dicts only; a builder (package.module:fn) is imported on build_model
    if info["architecture"] is not None and not is_builder_reference(info["architecture"]):
        check_layout_fits(info, path / CONFIG_NAME)
    files = {s: sorted(str(f) for f in (path / "data").glob(f"{s}-*.parquet")) for s in ("train", "validation", "test")}
    files = {s: f for s, f in files.items() if f}
    if not files:
        raise ValueError(f"{path} is not a zoo: {path / 'data'} holds no parquet shards ({{split}}-NNNNN.parquet)")
    # explicit absolute file lists: datasets' cache key for a folder's YAML patterns does not tell
    # two zoo folders of the same name apart
    dataset = datasets.load_dataset("parquet", data_files=files)
    for split, ds in dataset.items():
        feature = ds.features.get("weights")
        length = getattr(feature, "length", None)
        if length != WeightLayout.from_dict(info["layout"]).num_weights:
            raise ValueError(
                f"{path}: split {split!r} stores weight vectors of length {length}, but {CONFIG_NAME} lays out "
                f"{WeightLayout.from_dict(info['layout']).num_weights} weights for {info['architecture']!r}"
            )
    return Zoo(path, info, dataset)
