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

from .checkpoints import import_checkpoints
from .hub_models import import_hub_models
from .modelzoos import import_modelzoos
from .smallcnnzoo import import_smallcnnzoo

FORMATS = {
    "smallcnnzoo": import_smallcnnzoo,
    "modelzoos": import_modelzoos,
    "checkpoints": import_checkpoints,
    "hub-models": import_hub_models,
}


def import_zoo(format: str, path: str | os.PathLike | None, out_dir: str | os.PathLike, **options):
    """Import the zoo at `path` (of `format`, one of FORMATS) into a zoo dataset at `out_dir`; returns it loaded.

    `options` are the format's own (see each importer), e.g. architecture=, task=, seed=, progress=,
    models_per_shard=. Rerunning an interrupted import with the same arguments resumes it.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown import format {format!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[format](path, out_dir, **options)


__all__ = ["FORMATS", "import_checkpoints", "import_hub_models", "import_modelzoos", "import_smallcnnzoo", "import_zoo"]
