"""Import published zoos and people's own checkpoints as zoo datasets: `import_zoo(format, path, out_dir)`.

Every format goes through one writer (`writer.write_zoo`): the same schema as built zoos plus a
`source` column (the original model's identifier) and the format's hyperparameters as extra typed
columns, by-model splits, shards streamed a few models at a time, the zoo renamed into place only
when whole, and a killed import resumed by rerunning it.

| format | PATH holds |
|---|---|
| `smallcnnzoo` | the Small CNN Zoo: weights.npy, metrics.csv.gz, layout.csv (anywhere below PATH) |
| `modelzoos` | Model Zoos trial folders: <trial>/params.json, result.json, checkpoint_N/checkpoints (folder, .tar, .tar.gz, .zip, hf://) |
| `checkpoints` | your own checkpoints: *.safetensors / *.pt / *.pth / *.bin state_dicts or transformers model folders (+ a metadata table) |
| `hub-models` | no PATH: Hub model repos given by id, one row per repo, pinned to its commit |
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import checkpoints, modelzoos, smallcnnzoo
from .checkpoints import import_checkpoints
from .hub_models import import_hub_models
from .smallcnnzoo import import_smallcnnzoo

FORMATS = {
    "smallcnnzoo": import_smallcnnzoo,
    "modelzoos": modelzoos.import_modelzoos,
    "checkpoints": import_checkpoints,
    "hub-models": import_hub_models,
}


EXPECTED = {
    "smallcnnzoo": smallcnnzoo.EXPECTS,
    "modelzoos": f"{modelzoos.EXPECTS} (a folder, .tar, .tar.gz, .zip or hf:// path)",
    "checkpoints": checkpoints.EXPECTS,
    "hub-models": "no PATH: Hub repo ids given with --models org/name ...",
}


def detect_format(path: str | os.PathLike | None) -> str:
    """The format of what lies at `path`, or a ValueError saying what each format expects to find."""
    text = str(path) if path is not None else ""
    if text.startswith("hf://"):
        return "modelzoos"
    p = Path(text)
    if path is not None and p.is_file() and p.name.lower().endswith((".tar.xz", ".txz")):
        return "smallcnnzoo"  # the Small CNN Zoo ships as .tar.xz, the Model Zoos as .zip / .tar
    if path is not None and p.is_file() and p.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".zip", ".pt")):
        return "modelzoos"
    if path is not None and p.is_dir():
        if any(p.rglob("weights.npy")):
            return "smallcnnzoo"
        if any(re.fullmatch(r"checkpoint_\d+", q.name) and q.is_dir() for q in p.rglob("checkpoint_*")):
            return "modelzoos"
        if checkpoints.find_checkpoints(p):
            return "checkpoints"
    expected = "; ".join(f"{name} expects {what}" for name, what in EXPECTED.items())
    raise ValueError(f"{path} is none of the import formats: {expected}. Pass --format to say which it is")


def import_zoo(format: str, path: str | os.PathLike | None, out_dir: str | os.PathLike, **options):
    """Import the zoo at `path` (of `format`, one of FORMATS, or "auto") into a zoo dataset at `out_dir`; returns it loaded.

    `options` are the format's own (see each importer), e.g. architecture=, task=, seed=, progress=,
    models_per_shard=. Rerunning an interrupted import with the same arguments resumes it.
    """
    format = resolve_format(format, path, options)
    return FORMATS[format](path, out_dir, **options)


def import_modelzoos(path, out_dir, architecture=None, architecture_kwargs=None, task=None, seed=0, shard_models=None, progress=True, **options):
    """`import_zoo("modelzoos", ...)`, the public name of the first importer (`shard_models` is models_per_shard)."""
    if shard_models is not None:
        options["models_per_shard"] = shard_models
    return import_zoo("modelzoos", path, out_dir, architecture=architecture, architecture_kwargs=architecture_kwargs,
                      task=task, seed=seed, progress=progress, **options)


def resolve_format(format: str, path, options: dict) -> str:
    """`format`, checked, or for "auto" the format of `path` (hub-models for --models, modelzoos for --repo)."""
    if format == "auto":
        if path is None and options.get("models"):
            return "hub-models"
        return "modelzoos" if options.get("repo") else detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"unknown import format {format!r}; choose one of {sorted(FORMATS)} (or auto)")
    return format


__all__ = ["FORMATS", "detect_format", "resolve_format", "import_checkpoints", "import_hub_models", "import_modelzoos", "import_smallcnnzoo", "import_zoo"]
