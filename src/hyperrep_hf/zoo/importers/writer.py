"""The one writer of imported zoos: streaming shards, by-model splits, atomic appearance, resume.

An importer lists its models (cheap metadata), gives each a split, and hands the writer a function
that reads one model's rows. The writer reads `models_per_shard` models at a time (memory is bounded
by a shard and a byte budget, never by the zoo), writes their rows as parquet shards into a work folder beside the
target, `.{name}.importing/`, and records each finished shard in `progress/shard-NNNNN.json`.
At the end it writes the card and sidecar and renames the work folder to the target, so the zoo
appears whole or not at all. A rerun of the same import after a kill resumes from the last finished
shard; a rerun with other options (another fingerprint) starts the work folder afresh.

A row is a dict with `epoch`, `weights` (float32 [P]) and any of the zoo columns: metrics (None when
the source has no value), hyperparameters, extra columns (`source` is required). The writer fills
`model_id`, `architecture`, `ggap` (train_acc - test_acc when absent) and `diverged` (non-finite
weights or a non-finite loss the source reported).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...files import atomic_write_json
from ...layout import WeightLayout
from ..card import finalize_zoo
from ..dataset import (
    FORMAT,
    HYPERPARAMETER_TYPES,
    METRICS,
    STANDARD_COLUMNS,
    Zoo,
    check_extra_columns,
    load_zoo,
    write_shard,
)
from ..spec import split_by_model

PROGRESS_DIR = "progress"
STATE_NAME = "import.json"
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
LOSSES = ("train_loss", "val_loss", "test_loss")
MAX_SHARD_BYTES = 512 << 20  # weights per parquet part: a ResNet-18 zoo's shard does not sit in memory whole


def column_type(values) -> str:
    """The zoo column type ("bool", "int64", "float64" or "string") of a pandas column of a format's table."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(values):
        return "bool"
    if pd.api.types.is_integer_dtype(values):
        return "int64"
    if pd.api.types.is_float_dtype(values):
        return "float64"
    return "string"

def model_splits(num_models: int, seed: int, where: str) -> list[str]:
    """train / validation / test per model (SPLIT_FRACTIONS): every epoch of a model in one split.
    Fewer than 3 models cannot fill three splits: they all go to train."""
    if num_models < 1:
        raise ValueError(f"{where} holds no models to import")
    if num_models < 3:
        return ["train"] * num_models
    return split_by_model(num_models, SPLIT_FRACTIONS, seed)


def work_folder(out: Path) -> Path:
    """Where an import of `out` is assembled before it is renamed into place."""
    return out.parent / f".{out.name}.importing"


def _typed(value, typ: str):
    if value is None or (isinstance(value, float) and math.isnan(value)):  # pandas writes a missing value as NaN
        return None
    if typ == "string":
        return str(value)
    if typ == "int64":
        return int(value)
    if typ == "bool":
        return bool(value)
    return float(value)


def _metric(value) -> float:
    return float("nan") if value is None else float(value)


class _Shard:
    """The rows of shard `index`, per split, written as parquet parts whenever ~`max_bytes` of weights have gathered."""

    def __init__(self, folder: Path, index: int, columns: Sequence[str], num_weights: int, extra: Mapping[str, str], max_bytes: int):
        self.folder, self.index, self.columns, self.num_weights, self.extra, self.max_bytes = folder, index, columns, num_weights, extra, max_bytes
        self.splits: dict[str, dict[str, list]] = {}
        self.nbytes, self.part = 0, 0
        self.counts: dict[str, int] = {}

    def add(self, split: str, row: dict) -> None:
        cols = self.splits.setdefault(split, {c: [] for c in self.columns})
        for c in self.columns:
            cols[c].append(row.get(c))
        self.nbytes += row["weights"].nbytes
        if self.nbytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        for split, cols in self.splits.items():
            cols["weights"] = np.stack(cols["weights"])
            path = self.folder / f"{split}-{self.index:05d}-{self.part:03d}.parquet"
            self.counts[split] = self.counts.get(split, 0) + write_shard(path, cols, self.num_weights, self.extra)
        self.splits, self.nbytes, self.part = {}, 0, self.part + 1


def _claim(out: Path, work: Path, fingerprint: dict) -> None:
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose a new --out folder for the imported zoo")
    state = work / STATE_NAME
    if state.is_file():
        try:
            same = json.loads(state.read_text(encoding="utf-8")) == fingerprint
        except json.JSONDecodeError:
            same = False
        if same:
            for tmp in (work / "data").glob(".*.tmp"):  # a shard whose writer was killed
                tmp.unlink()
            return
    shutil.rmtree(work, ignore_errors=True)  # another import (or a broken one) was here: restart cleanly
    atomic_write_json(work / STATE_NAME, fingerprint)


def write_zoo(
    out_dir: str | os.PathLike,
    info: dict,
    models: Sequence,
    splits: Sequence[str],
    read_model: Callable[[object], Iterable[dict]],
    *,
    layout: WeightLayout,
    extra_columns: Mapping[str, str],
    fingerprint: Mapping,
    models_per_shard: int = 64,
    max_shard_bytes: int | None = None,
    progress: bool = True,
    desc: str = "import",
) -> Zoo:
    """Write the zoo of `models` (one split each) to `out_dir`, reading each with `read_model(model)`.

    `info`: the sidecar's fields the importer knows (name, architecture, architecture_kwargs, task,
    config); the writer adds format, layout, counts, epochs, varied hyperparameters and extra columns.
    `fingerprint`: what identifies this import (format, path, options): a rerun with the same one resumes.
    A shard holds `models_per_shard` models, written as parquet parts of at most ~`max_shard_bytes` of
    weights each (`{split}-{shard:05d}-{part:03d}.parquet`), so memory stays bounded for large models too.
    """
    out = Path(out_dir)
    extra = check_extra_columns(extra_columns)
    if "source" not in extra:
        raise ValueError("an imported zoo needs a 'source' extra column (the original model's identifier)")
    if len(models) != len(splits):
        raise ValueError(f"{len(models)} models but {len(splits)} splits")
    if models_per_shard < 1:
        raise ValueError(f"models_per_shard must be at least 1, got {models_per_shard}")
    work = work_folder(out)
    fingerprint = json.loads(json.dumps(dict(fingerprint), default=str))
    _claim(out, work, fingerprint)
    columns = [*STANDARD_COLUMNS, *extra]
    num_shards = -(-len(models) // models_per_shard)
    markers = [work / PROGRESS_DIR / f"shard-{k:05d}.json" for k in range(num_shards)]
    done = [m.is_file() for m in markers]
    done_models = sum(min(models_per_shard, len(models) - k * models_per_shard) for k in range(num_shards) if done[k])
    bar = tqdm(total=len(models), initial=done_models, desc=desc, unit="model", disable=not progress, dynamic_ncols=True)
    for k in range(num_shards):
        if done[k]:
            continue
        for stale in (work / "data").glob(f"*-{k:05d}-*.parquet"):  # parts of this shard from a killed run
            stale.unlink()
        shard = _Shard(work / "data", k, columns, layout.num_weights, extra, max_shard_bytes or MAX_SHARD_BYTES)
        epochs: set[int] = set()
        values: dict[str, list] = {}
        for i in range(k * models_per_shard, min(len(models), (k + 1) * models_per_shard)):
            for row in read_model(models[i]):  # an iterable: a model's checkpoints need not all be in memory
                row = _complete_row(row, i, info.get("architecture"), layout.num_weights, extra)
                shard.add(splits[i], row)
                epochs.add(row["epoch"])
                for c in (*HYPERPARAMETER_TYPES, *(e for e in extra if e != "source")):
                    seen = values.setdefault(c, [])
                    v = json.dumps(row[c])
                    if v not in seen and len(seen) < 2:  # two distinct values are enough to call a column varied
                        seen.append(v)
            bar.update(1)
        shard.flush()
        atomic_write_json(markers[k], {"shard": k, "rows": shard.counts, "epochs": sorted(epochs), "values": values})
    bar.close()

    epochs, values = set(), {}
    for marker in markers:
        m = json.loads(marker.read_text(encoding="utf-8"))
        epochs.update(m["epochs"])
        for c, vs in m["values"].items():
            seen = values.setdefault(c, set())
            seen.update(vs)
    info = {
        "format": FORMAT,
        "version": 1,
        **info,
        "layout": layout.to_dict(),
        "num_weights": layout.num_weights,
        "num_models": len(models),
        "checkpoint_epochs": sorted(epochs),
        "varied": sorted(c for c, vs in values.items() if len(vs) > 1),
        "extra_columns": extra,
        "complete": False,
    }
    shutil.rmtree(work / PROGRESS_DIR)
    os.unlink(work / STATE_NAME)
    finalize_zoo(work, info)
    if out.exists():
        out.rmdir()  # an empty --out folder made by the user
    os.replace(work, out)  # the zoo appears whole or not at all
    return load_zoo(out)


def _complete_row(row: dict, model_index: int, architecture: str | None, num_weights: int, extra: Mapping[str, str]) -> dict:
    unknown = set(row) - set(STANDARD_COLUMNS) - set(extra)
    if unknown:
        raise ValueError(f"row of model {row.get('source')!r} has columns {sorted(unknown)} that the zoo does not declare")
    weights = np.asarray(row["weights"], dtype=np.float32).reshape(-1)
    if weights.size != num_weights:
        raise ValueError(f"{row.get('source')}: {weights.size} weights, the zoo's layout holds {num_weights}")
    out = {"model_id": model_index, "architecture": architecture, **row, "weights": weights}
    out["model_id"], out["epoch"] = int(out["model_id"]), int(out["epoch"])
    metrics = {m: out.get(m) for m in METRICS}
    if metrics["ggap"] is None and metrics["train_acc"] is not None and metrics["test_acc"] is not None:
        metrics["ggap"] = float(metrics["train_acc"]) - float(metrics["test_acc"])
    if out.get("diverged") is None:
        bad_loss = any(metrics[m] is not None and not math.isfinite(float(metrics[m])) for m in LOSSES)
        out["diverged"] = bad_loss or not bool(np.isfinite(weights).all())
    out.update({m: _metric(v) for m, v in metrics.items()})
    out.update({c: _typed(out.get(c), t) for c, t in HYPERPARAMETER_TYPES.items()})
    out.update({c: _typed(out.get(c), t) for c, t in extra.items()})
    return out


__all__ = ["model_splits", "work_folder", "write_zoo"]
