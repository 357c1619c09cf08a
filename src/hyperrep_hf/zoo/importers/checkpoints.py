"""Your own checkpoints as a zoo: a folder of state_dict files or transformers model folders.

    PATH/**/*.safetensors                 a state_dict in safetensors
    PATH/**/*.pt, *.pth, *.bin            a torch.save'd state_dict (loaded with weights_only=True)
    PATH/**/<folder>/config.json + model.safetensors (or pytorch_model.bin, sharded too): a transformers model

`metadata`: a table (CSV, JSON lines or parquet) with a `file` column (relative to PATH), `model_id`
and `epoch` columns, and any others: metrics (train_acc, test_acc, ...) and hyperparameters (lr,
activation, ...) fill the standard columns, everything else becomes typed extra columns, and a
`split` column (train / validation / test) fixes the splits. Without it every file is a model at epoch 0.

The architecture: a registered name, "package.module:builder" (a callable returning the nn.Module,
called with `architecture_kwargs`), the transformers config of model folders, or none: then the
layout comes from the first state_dict and the zoo's rows are state_dicts (`zoo.state_dict(row)`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ...layout import WeightLayout
from ..architectures import build_model, is_builder_reference, transformers_class, trust_builder
from ..dataset import HYPERPARAMETER_TYPES, METRICS
from .state_dicts import flatten_state_dict, read_state_dict
from .writer import column_type, model_splits, write_zoo

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
EXPECTS = "checkpoint files (*.safetensors, *.pt, *.pth, *.bin state_dicts) or transformers model folders (config.json + model.safetensors)"
RESERVED = ("weights", "architecture", "source", "model_name")
SPLITS = ("train", "validation", "test")


def is_transformers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / w).is_file() for w in TRANSFORMERS_WEIGHTS)


def find_checkpoints(root: Path) -> list[Path]:
    """Checkpoint files and transformers model folders below `root`, sorted; a model folder's own files are not listed apart."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give the folder that holds your {EXPECTS}")
    folders = sorted(p.parent for p in root.rglob("config.json") if is_transformers_folder(p.parent))
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES and not any(f in p.parents for f in folders))
    return sorted(folders + files)


def read_checkpoint(path: Path, where: str | None = None) -> dict:
    """The state_dict of a checkpoint file or of a transformers model folder (tied weights included)."""
    where = where or str(path)
    if path.is_dir():
        cls, _ = transformers_class(read_config(path))
        try:
            return cls.from_pretrained(str(path)).state_dict()
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{where}: cannot load it as a transformers {cls.__name__} ({err})") from err
    return read_state_dict(path, where)


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder / 'config.json'}: not a readable JSON config ({err})") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{folder / 'config.json'}: not a transformers config (no model_type)")
    return config


def read_table(path: Path) -> pd.DataFrame:
    """A metadata table: .csv, .jsonl / .json (JSON lines) or .parquet."""
    if not path.is_file():
        raise FileNotFoundError(f"metadata table {path} does not exist")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            return pd.read_json(path, lines=True)
        return pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"metadata table {path}: cannot read it ({err}); give a CSV, JSON lines or parquet file") from err


def resolve_architecture(architecture: str | None, kwargs: dict, first: Path, where: str) -> tuple[str | None, dict, WeightLayout]:
    """(architecture, kwargs, layout): given, from a transformers folder's config, or None (layout of the first state_dict)."""
    if is_builder_reference(architecture):
        trust_builder(architecture)  # the user named this code: it may run
    if architecture is not None:
        try:
            model = build_model(architecture, **kwargs)
        except TypeError as err:
            raise ValueError(f"architecture {architecture!r} does not take the arguments {kwargs} ({err}); fix --architecture-kwargs") from err
        return architecture, kwargs, WeightLayout.from_state_dict(model.state_dict())
    if first.is_dir():
        config = read_config(first)
        return "transformers", {"config": config}, WeightLayout.from_state_dict(build_model("transformers", config=config).state_dict())
    return None, {}, WeightLayout.from_state_dict(read_checkpoint(first, where))


def plan_models(root: Path, metadata: Path | None) -> tuple[list[list[dict]], dict[str, str], pd.Series | None]:
    """Models as lists of {"file", "epoch", columns...}, the extra columns' types, and the `split` of each model (or None)."""
    if metadata is None:
        found = find_checkpoints(root)
        if not found:
            raise ValueError(f"{root} holds no checkpoints: expected {EXPECTS}; group them into models and epochs with --metadata TABLE")
        return [[{"file": f, "epoch": 0}] for f in found], {}, None
    table = read_table(metadata)
    missing = [c for c in ("file", "model_id") if c not in table.columns]
    if missing:
        raise ValueError(f"metadata table {metadata} lacks columns {missing}: it needs file (relative to {root}), model_id and epoch")
    if "epoch" not in table.columns:
        table["epoch"] = 0
    bad = [c for c in RESERVED if c in table.columns]
    if bad:
        raise ValueError(f"metadata table {metadata}: columns {bad} are set by the import; rename them")
    files = [root / str(f) for f in table["file"]]
    absent = [str(f) for f, p in zip(table["file"], files) if not p.exists()]
    if absent:
        raise ValueError(f"metadata table {metadata} names {len(absent)} file(s) that are not in {root}: {absent[:3]}; fix the file column (paths relative to PATH)")
    dup = table.duplicated(["model_id", "epoch"], keep=False)
    if dup.any():
        rows = table[dup].sort_values(["model_id", "epoch"]).head(2)
        raise ValueError(
            f"metadata table {metadata}: two files for model {rows.model_id.iloc[0]!r} at epoch {rows.epoch.iloc[0]} "
            f"({rows.file.iloc[0]} and {rows.file.iloc[1]}); keep one per (model_id, epoch)"
        )
    split = None
    if "split" in table.columns:
        wrong = sorted(set(table["split"].astype(str)) - set(SPLITS))
        if wrong:
            raise ValueError(f"metadata table {metadata}: split values {wrong}; use {list(SPLITS)}")
        per_model = table.groupby("model_id", sort=False)["split"].nunique()
        if (per_model > 1).any():
            raise ValueError(f"metadata table {metadata}: model {per_model[per_model > 1].index[0]!r} lies in two splits; every epoch of a model goes to one split")
        split = table.groupby("model_id", sort=False)["split"].first()
    standard = {"model_id", "epoch", "file", "split", "diverged", *METRICS, *HYPERPARAMETER_TYPES}
    extra = {c: column_type(table[c]) for c in table.columns if c not in standard}
    integer_ids = pd.api.types.is_integer_dtype(table["model_id"])
    if not integer_ids:
        extra["model_name"] = "string"
    table = table.assign(file=files).sort_values(["model_id", "epoch"], kind="stable")
    models = []
    for _, group in table.groupby("model_id", sort=False):
        rows = group.drop(columns=[c for c in ("split",) if c in group]).to_dict("records")
        for r in rows:
            if not integer_ids:
                r["model_name"] = str(r.pop("model_id"))
        models.append(rows)
    return models, extra, split


def import_checkpoints(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    metadata: str | os.PathLike | None = None,
    architecture: str | None = None,
    architecture_kwargs: dict | None = None,
    task: str | None = None,
    seed: int = 0,
    models_per_shard: int = 64,
    progress: bool = True,
):
    """Convert a folder of checkpoints (and its metadata table) into a zoo dataset at `out_dir`; returns it loaded."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give the folder that holds your {EXPECTS}")
    metadata = Path(metadata) if metadata is not None else None
    models, extra, split = plan_models(root, metadata)
    first = models[0][0]["file"]
    architecture, kwargs, layout = resolve_architecture(architecture, dict(architecture_kwargs or {}), first, str(first))
    what = f"architecture {architecture}" if architecture else f"the layout of {first.relative_to(root)}"
    splits = [split[m[0].get("model_id", m[0].get("model_name"))] for m in models] if split is not None else model_splits(len(models), seed, str(root))

    def read_model(rows: list[dict]) -> list[dict]:
        out = []
        for r in rows:
            file = r["file"]
            source = file.relative_to(root).as_posix()
            flat = flatten_state_dict(read_checkpoint(file, str(file)), layout, str(file), what)
            out.append({**{k: (None if _missing(v) else v) for k, v in r.items() if k != "file"}, "weights": flat, "source": source})
        return out

    info = {
        "name": root.resolve().name,
        "architecture": architecture,
        "architecture_kwargs": kwargs,
        "task": task,
        "config": {
            "source": "checkpoints",
            "path": str(root.resolve()),
            "metadata": str(metadata) if metadata else None,
            "description": f"Imported from the checkpoints in {root}" + (f" with the metadata of {metadata.name}." if metadata else "."),
        },
    }
    fingerprint = {"format": "checkpoints", "path": str(root.resolve()), "metadata": str(metadata), "architecture": architecture,
                   "kwargs": kwargs, "seed": seed, "models_per_shard": models_per_shard}
    return write_zoo(
        out_dir, info, models, splits, read_model, layout=layout, extra_columns={"source": "string", **extra},
        fingerprint=fingerprint, models_per_shard=models_per_shard, progress=progress, desc="import checkpoints",
    )


def _missing(value) -> bool:
    return value is None or (isinstance(value, float | np.floating) and np.isnan(value))


__all__ = ["import_checkpoints", "find_checkpoints", "read_checkpoint", "is_transformers_folder"]
