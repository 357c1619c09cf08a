"""A zoo on disk (and on the Hub): parquet shards, a JSON sidecar and a dataset card.

    DIR/data/{split}-{chunk:05d}.parquet   one row per (model, epoch); splits train/validation/test
    DIR/zoo_config.json                    architecture + kwargs, WeightLayout, task, generating config
    DIR/README.md                          DatasetCard; its YAML `configs` name the data files

`datasets.load_dataset(DIR)` (or the Hub repo id) loads the rows; `load_zoo` adds the layout and
architecture, so a row turns back into a working model in one call.

Reading: `Zoo.rows(split)` reads weight rows lazily, straight from the parquet shards (memory-mapped),
one row group at a time, keeping decoded row groups in a cache of bounded size (`ROW_CACHE_BYTES`),
and `Zoo.metadata` reads only the other columns: neither copies the zoo into datasets' Arrow cache,
and a zoo larger than memory is never read whole. `Zoo.dataset` (a DatasetDict, for pipelines and
row-by-row access) is loaded with datasets only when something asks for it.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
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
    # keep row groups near 32 MB so readers and the Hub viewer can stream them; weights are neither
    # dictionary-encoded nor given page statistics: float weights repeat no values, and trying made
    # files of random ResNet-18 rows 1.66x their raw size and wrote them 17x slower (pyarrow 2026-12)
    others = [n for n in table.column_names if n != "weights"]
    atomic_save(path, lambda tmp: pq.write_table(table, tmp, row_group_size=max(1, (32 << 20) // (4 * num_weights)),
                                                 use_dictionary=others, write_statistics=others))
    return len(weights)


def data_files_config() -> list[dict]:
    return [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in ("train", "validation", "test")]}]

# Decoded row groups a zoo keeps in memory (all splits together). A zoo smaller than this is read
# from disk once and then served from memory, as fast as a tensor; a larger one (a ResNet-18 zoo:
# one 45 MB row per row group) keeps only the most recently used row groups.
ROW_CACHE_BYTES = 256 << 20


class RowGroupCache:
    """Least-recently-used decoded row groups (numpy [rows, P] float32), at most `max_bytes` in all;
    a row group larger than that is decoded for the read that needs it and not kept. Thread-safe
    (the trainer builds batches in a background thread). `reads` counts row groups decoded."""

    def __init__(self, max_bytes: int = ROW_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self.blocks: OrderedDict = OrderedDict()
        self.nbytes = 0
        self.reads = 0
        self.lock = threading.Lock()

    def get(self, key, load) -> np.ndarray:
        with self.lock:
            if key in self.blocks:
                self.blocks.move_to_end(key)
                return self.blocks[key]
            block = load()
            self.reads += 1
            if block.nbytes <= self.max_bytes:
                self.blocks[key] = block
                self.nbytes += block.nbytes
                while self.nbytes > self.max_bytes:
                    _, old = self.blocks.popitem(last=False)
                    self.nbytes -= old.nbytes
            return block

    def clear(self) -> None:
        with self.lock:
            self.blocks.clear()
            self.nbytes = 0


class _Shards:
    """The parquet shards of one split: which row group holds which row."""

    def __init__(self, files: Sequence[str], num_weights: int, cache: RowGroupCache, name: str):
        self.files, self.num_weights, self.cache, self.name = list(files), int(num_weights), cache, name
        self._open: dict[int, pq.ParquetFile] = {}
        self._lock = threading.Lock()  # one decode at a time per split (batches are built in a thread)
        group_file, group_index, sizes = [], [], []
        for f, path in enumerate(self.files):
            meta = pq.read_metadata(path)
            for g in range(meta.num_row_groups):
                group_file.append(f)
                group_index.append(g)
                sizes.append(meta.row_group(g).num_rows)
        self.group_file, self.group_index = np.asarray(group_file, np.int64), np.asarray(group_index, np.int64)
        self.group_start = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.num_rows = int(self.group_start[-1])

    def _decode(self, group: int) -> np.ndarray:
        f = int(self.group_file[group])
        with self._lock:
            if f not in self._open:
                self._open[f] = pq.ParquetFile(self.files[f], memory_map=True)
            column = self._open[f].read_row_group(int(self.group_index[group]), columns=["weights"]).column(0)
        values = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]) \
            if column.num_chunks != 1 else column.chunk(0).flatten().to_numpy(zero_copy_only=False)
        return values.reshape(-1, self.num_weights)

    def read(self, rows: np.ndarray, cache: bool = True) -> torch.Tensor:
        """Split row indices [n] -> their weights [n, P] float32 (a new tensor; only the row groups
        holding these rows are decoded; cache=False: decoded row groups are not kept)."""
        out = torch.empty(len(rows), self.num_weights)
        if not len(rows):
            return out
        groups = np.searchsorted(self.group_start, rows, side="right") - 1
        for g in np.unique(groups):
            block = self.cache.get((self.name, int(g)), lambda g=int(g): self._decode(g)) if cache else self._decode(int(g))
            sel = np.flatnonzero(groups == g)
            local = rows[sel] - self.group_start[g]
            out[torch.from_numpy(sel)] = torch.from_numpy(block[local])
        return out


class ZooRows:
    """The weight rows of one zoo split, read lazily: `rows[i]` -> [P], `rows[slice or indices]` ->
    [n, P] float32 (only those rows are read), `rows.select(indices)` -> a ZooRows of those rows,
    `len(rows)`, `rows.shape` ([rows, P]), `rows.chunks(max_bytes)` -> [n, P] tensors in order.
    Indexing it like the [rows, P] tensor of `Zoo.weights` gives the same values."""

    def __init__(self, shards: _Shards, index: np.ndarray | None = None):
        self.shards = shards
        self.index = np.arange(shards.num_rows, dtype=np.int64) if index is None else np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_weights(self) -> int:
        return self.shards.num_weights

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.num_weights)

    def _positions(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return self.index[key]
        key = key.numpy() if torch.is_tensor(key) else np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"a boolean row mask must have {len(self)} entries, got shape {list(key.shape)}")
            return self.index[key]
        return self.index[key.astype(np.int64).reshape(-1)]

    def select(self, key) -> ZooRows:
        """A ZooRows of the rows `key` (indices, a boolean mask or a slice) picks; nothing is read."""
        return ZooRows(self.shards, self._positions(key))

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self.shards.read(self.index[[int(key)]])[0]
        return self.shards.read(self._positions(key))

    def chunks(self, max_bytes: int = 64 << 20) -> Iterator[torch.Tensor]:
        """The rows in order, as tensors [n, P] of at most max(1 row, max_bytes)."""
        step = max(1, int(max_bytes) // (4 * max(1, self.num_weights)))
        for start in range(0, len(self), step):
            yield self[start:start + step]

    def __repr__(self) -> str:
        return f"ZooRows({len(self)} rows x {self.num_weights} weights of split {self.shards.name!r})"


def split_files(path: Path) -> dict[str, list[str]]:
    """{split: its parquet shards (sorted)} of a zoo folder, splits without shards left out."""
    files = {s: sorted(str(f) for f in (Path(path) / "data").glob(f"{s}-*.parquet")) for s in ("train", "validation", "test")}
    return {s: f for s, f in files.items() if f}


class Zoo:
    """A loaded zoo: `dataset` (DatasetDict, loaded on first use), `layout`, `architecture` (None for
    a zoo imported without one: its rows are state_dicts only), `architecture_kwargs`, `task`,
    `config` (the generating config), `extra_columns` (name -> type beyond the standard columns),
    `info` (the whole sidecar), `splits` (the split names with rows), `files` ({split: shards}).
    Read weights with `rows(split)` (lazy) or `weights(split)` (the whole split as one tensor)."""

    def __init__(self, path: Path, info: dict, dataset=None, files: Mapping[str, list[str]] | None = None):
        self.path, self.info, self._dataset = Path(path), info, dataset
        # rows come from the shards, or (a DatasetDict given and no files) from that dataset
        self.files = dict(files) if files is not None else (split_files(self.path) if dataset is None else None)
        self.row_cache = RowGroupCache()
        self._shards: dict[str, _Shards] = {}
        self.layout = WeightLayout.from_dict(info["layout"])
        self.architecture = info["architecture"]
        self.architecture_kwargs = dict(info.get("architecture_kwargs") or {})
        self.task = info.get("task")
        self.config = info.get("config", {})
        self.extra_columns = dict(info.get("extra_columns") or {})

    @property
    def num_weights(self) -> int:
        return self.layout.num_weights

    @property
    def dataset(self):
        """The zoo's rows as a datasets.DatasetDict (load_dataset on the shards, on first use: it
        writes datasets' Arrow cache, which `rows` and `metadata` never need)."""
        if self._dataset is None:
            import datasets

            self._dataset = datasets.load_dataset("parquet", data_files=self.files)
        return self._dataset

    @dataset.setter
    def dataset(self, value) -> None:
        """A DatasetDict given in place of the shards (e.g. with columns changed): from then on
        every read of this Zoo goes through it, the whole split at a time, as before lazy reading."""
        self._dataset, self.files, self._shards = value, None, {}

    @property
    def splits(self) -> list[str]:
        return list(self.files if self.files is not None else self._dataset)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"the zoo has no split {split!r}; splits: {self.splits}")

    def rows(self, split: str = "train") -> ZooRows | torch.Tensor:
        """The weight rows of a split, read lazily from the shards (see ZooRows); a Zoo given a
        DatasetDict (`dataset = ...`) returns the whole split as a tensor, indexed alike."""
        self._check_split(split)
        if self.files is None:
            return self.weights(split)
        if split not in self._shards:
            self._shards[split] = _Shards(self.files[split], self.num_weights, self.row_cache, split)
        return ZooRows(self._shards[split])

    def num_rows(self, split: str = "train") -> int:
        if split not in self.splits:
            return 0
        return len(self.rows(split)) if self.files is not None else len(self._dataset[split])

    def column_names(self, split: str = "train") -> list[str]:
        self._check_split(split)
        if self.files is None:
            return list(self._dataset[split].column_names)
        return list(pq.read_schema(self.files[split][0]).names)

    def weights(self, split: str = "train") -> torch.Tensor:
        """All weight vectors of a split as one tensor [rows, P] (the whole split in memory: for
        large zoos use `rows(split)`, which reads only the rows asked for)."""
        self._check_split(split)
        if self.files is None:
            ds = self._dataset[split]
            column = ds.with_format("arrow")[:]["weights"]  # zero-copy view of the memory-mapped table
            chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
            parts = [c.flatten().to_numpy(zero_copy_only=False) for c in chunks]
            values = np.concatenate(parts) if len(parts) != 1 else parts[0].copy()  # one copy into torch-owned memory
            return torch.from_numpy(values.reshape(len(ds), self.num_weights))
        rows = self.rows(split)
        return rows.shards.read(rows.index, cache=False)  # read once: keeping row groups would double it

    def metadata(self, split: str = "train", columns=None):
        """The non-weight columns of a split as a pandas DataFrame (cheap: weights are not read)."""
        columns = list(columns or [c for c in self.column_names(split) if c != "weights"])
        if self.files is None:
            return self._dataset[split].select_columns(columns).to_pandas()
        tables = [pq.read_table(f, columns=columns, memory_map=True) for f in self.files[split]]
        return pa.concat_tables(tables).to_pandas()

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
        sizes = {k: self.num_rows(k) for k in self.splits}
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
    files = split_files(path)
    if not files:
        raise ValueError(f"{path} is not a zoo: {path / 'data'} holds no parquet shards ({{split}}-NNNNN.parquet)")
    # Only the shards' footers are read here: rows come lazily (Zoo.rows), and datasets loads the
    # DatasetDict (with explicit absolute file lists: its cache key for a folder's YAML patterns
    # does not tell two zoo folders of the same name apart) only when Zoo.dataset is used.
    expected = WeightLayout.from_dict(info["layout"]).num_weights
    for split, shards in files.items():
        for f in shards:
            field = pq.read_schema(f).field("weights") if "weights" in pq.read_schema(f).names else None
            length = getattr(field.type, "list_size", None) if field is not None else None
            if length != expected:
                raise ValueError(
                    f"{path}: split {split!r} stores weight vectors of length {length} ({Path(f).name}), but "
                    f"{CONFIG_NAME} lays out {expected} weights for {info['architecture']!r}"
                )
    return Zoo(path, info, files=files)
