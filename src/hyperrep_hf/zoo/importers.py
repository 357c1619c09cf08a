"""Import zoos in the published Model Zoos layout (Ray Tune trial folders) as zoo datasets.

    PATH/<trial>/params.json                     the trial's config ("model::nlin", "optim::lr", "seed", ...)
    PATH/<trial>/result.json                     one JSON line per epoch (train_acc, test_acc, loss, ...)
    PATH/<trial>/checkpoint_000012/checkpoints   torch state_dict after epoch 12 (epoch 0: initial state)

The checkpoint's floating-point entries, in order, must have the shapes of the target architecture
(state_dict names may differ: the published CNNs name them module_list.N.*); they are stored in
this library's WeightLayout order, so rows load into `build_model(architecture)` directly.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..layout import WeightLayout
from .architectures import ARCHITECTURES, build_model
from .card import finalize_zoo
from .dataset import CONFIG_NAME, FORMAT, HYPERPARAMETER_TYPES, METRICS, Zoo, load_zoo, write_shard
from .spec import split_by_model

FORMATS = ("modelzoos",)
# params.json keys of the published zoos -> zoo columns
PARAM_KEYS = {
    "seed": "seed",
    "model::nlin": "activation",
    "model::init_type": "init",
    "optim::optimizer": "optimizer",
    "optim::lr": "lr",
    "optim::wd": "weight_decay",
    "model::dropout": "dropout",
}
CHECKPOINT = re.compile(r"checkpoint_(\d+)$")


def _trial_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of Model Zoos trials")
    trials = sorted(p.parent for p in root.rglob("params.json"))
    if not trials:
        raise ValueError(f"{root} holds no trial folders: expected <trial>/params.json with checkpoint_XXXXXX/ folders beside it")
    return trials


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read it as JSON ({err})") from err
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d


def _read_results(path: Path) -> dict[int, dict]:
    """result.json -> {epoch: record}; the epoch is "training_iteration" (Ray Tune), else "epoch"."""
    if not path.is_file():
        raise ValueError(f"{path} is missing: every trial needs result.json (one JSON line per epoch)")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not a JSON line ({err})") from err
        epoch = rec.get("training_iteration", rec.get("epoch"))
        if epoch is None:
            raise ValueError(f"{path}, line {n}: has neither 'training_iteration' nor 'epoch'")
        out[int(epoch)] = rec
    return out


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: holds no state_dict (a dict of tensors)")
    return obj


def _float_shapes(sd) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in sd.values() if torch.is_tensor(t) and t.is_floating_point()]


def _infer_architecture(sd, params: dict, where: Path) -> tuple[str, dict]:
    shapes = _float_shapes(sd)
    channels = int(params.get("model::channels_in", 1))
    candidates = [("cnn-s", {"in_channels": channels}), ("cnn-l", {"in_channels": channels}), ("cnn-s", {"in_channels": 3}), ("cnn-s", {"in_channels": 1})]
    for name, kw in candidates:
        if _float_shapes(build_model(name, **kw).state_dict()) == shapes:
            return name, kw
    raise ValueError(f"{where}: its tensor shapes match no known Model Zoos architecture; pass architecture= (registered: {sorted(ARCHITECTURES)})")


def import_modelzoos(path: str | os.PathLike, out_dir: str | os.PathLike, architecture: str | None = None, architecture_kwargs: dict | None = None, task: str | None = None, seed: int = 0, shard_models: int = 64, progress: bool = True) -> Zoo:
    """Convert a folder of Model Zoos trials into a zoo dataset at `out_dir` and return it loaded."""
    root, out = Path(path), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose a new --out folder for the imported zoo")
    trials = _trial_dirs(root)
    params = [_read_json(t / "params.json") for t in trials]
    checkpoints = []
    for t in trials:
        cps = sorted((int(CHECKPOINT.match(p.name).group(1)), p / "checkpoints") for p in t.iterdir() if p.is_dir() and CHECKPOINT.match(p.name))
        if not cps:
            raise ValueError(f"{t}: no checkpoint_XXXXXX folders")
        for _, f in cps:
            if not f.is_file():
                raise ValueError(f"{f} is missing: each checkpoint_XXXXXX folder needs a 'checkpoints' file (torch state_dict)")
        checkpoints.append(cps)

    first_sd = _load_state_dict(checkpoints[0][0][1])
    if architecture is None:
        architecture, kwargs = _infer_architecture(first_sd, params[0], checkpoints[0][0][1])
    else:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; registered: {sorted(ARCHITECTURES)}")
        kwargs = {}
    kwargs.update(architecture_kwargs or {})
    layout = WeightLayout.from_state_dict(build_model(architecture, **kwargs).state_dict())
    expected = [e.shape for e in layout.entries]

    splits = split_by_model(len(trials), (0.7, 0.15, 0.15), seed)
    info = {
        "format": FORMAT,
        "version": 1,
        "name": root.name,
        "architecture": architecture,
        "architecture_kwargs": kwargs,
        "layout": layout.to_dict(),
        "num_weights": layout.num_weights,
        "task": task or params[0].get("dataset::name") or params[0].get("dataset") or None,
        "num_models": len(trials),
        "checkpoint_epochs": sorted({e for cps in checkpoints for e, _ in cps}),
        "varied": sorted({PARAM_KEYS[k] for k in PARAM_KEYS if len({json.dumps(p.get(k)) for p in params}) > 1}),
        "config": {"source": "modelzoos", "path": str(root), "params": params[0], "description": f"Imported from the Model Zoos trial folders in {root}."},
        "complete": False,
    }
    tmp = out.with_name(f".{out.name}.importing")
    shutil.rmtree(tmp, ignore_errors=True)
    rows_by_split: dict[str, dict[str, list]] = {}
    shard = 0

    def flush():
        nonlocal shard
        for split, cols in rows_by_split.items():
            cols["weights"] = np.stack(cols["weights"])
            write_shard(tmp / "data" / f"{split}-{shard:05d}.parquet", cols, layout.num_weights)
        rows_by_split.clear()
        shard += 1

    for i, (trial, p, cps) in enumerate(tqdm(list(zip(trials, params, checkpoints)), desc="import", unit="model", disable=not progress)):
        results = _read_results(trial / "result.json")
        hp = {col: p.get(key) for key, col in PARAM_KEYS.items()}
        for epoch, file in cps:
            sd = first_sd if (i == 0 and file == cps[0][1]) else _load_state_dict(file)
            floats = [t for t in sd.values() if torch.is_tensor(t) and t.is_floating_point()]
            if [tuple(t.shape) for t in floats] != expected:
                raise ValueError(f"{file}: tensor shapes {[list(t.shape) for t in floats]} do not fit {architecture} {kwargs} (expected {[list(s) for s in expected]})")
            rec = results.get(epoch, {})
            cols = rows_by_split.setdefault(splits[i], {c: [] for c in ("model_id", "epoch", "weights", *METRICS, "architecture", "diverged", *HYPERPARAMETER_TYPES)})
            cols["model_id"].append(i)
            cols["epoch"].append(epoch)
            cols["weights"].append(torch.cat([t.reshape(-1).float() for t in floats]).numpy())
            metric = {m: rec.get(m) for m in METRICS}
            metric["train_loss"] = metric["train_loss"] if metric["train_loss"] is not None else rec.get("loss")
            for m in METRICS:
                cols[m].append(float("nan") if metric[m] is None else float(metric[m]))
            if cols["ggap"][-1] != cols["ggap"][-1] and metric["train_acc"] is not None and metric["test_acc"] is not None:
                cols["ggap"][-1] = float(metric["train_acc"]) - float(metric["test_acc"])
            finite = all(math.isfinite(v) for v in (cols["train_loss"][-1],) if v == v) and bool(np.isfinite(cols["weights"][-1]).all())
            cols["architecture"].append(architecture)
            cols["diverged"].append(not finite)
            for col, typ in HYPERPARAMETER_TYPES.items():
                v = hp.get(col)
                cols[col].append(None if v is None else (str(v) if typ == "string" else int(v) if typ == "int64" else float(v)))
        if (i + 1) % shard_models == 0:
            flush()
    flush()
    finalize_zoo(tmp, info)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)  # the zoo appears whole or not at all
    return load_zoo(out)


__all__ = ["FORMATS", "import_modelzoos", "CONFIG_NAME"]
