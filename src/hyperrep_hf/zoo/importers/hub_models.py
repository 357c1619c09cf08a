"""A zoo of Hub model repos of one architecture: one row per repo, its revision pinned in `source`.

    models = ["org/a", "org/b@v1", ...]   or a text file with one repo id per line (# comments)

Each repo is resolved to its commit sha first (`org/a@<sha>` is the row's `source`), then only its
config and weights are downloaded: a transformers model (config.json + model.safetensors /
pytorch_model.bin, sharded too) or a bare `model.safetensors` of a registered or builder architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...layout import WeightLayout
from ..architectures import build_model
from .checkpoints import is_transformers_folder, read_checkpoint, read_config
from .state_dicts import flatten_state_dict
from .writer import model_splits, write_zoo

WEIGHT_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json"]


def read_model_ids(models) -> list[str]:
    """Repo ids from a list, or from a text file (one per line, `#` starts a comment)."""
    if isinstance(models, str | os.PathLike):
        models = [models]
    models = list(models or [])
    if len(models) == 1 and Path(models[0]).is_file():
        lines = Path(models[0]).read_text(encoding="utf-8").splitlines()
        models = [line.split("#", 1)[0].strip() for line in lines]
    ids = [m for m in (str(m).strip() for m in models) if m]
    if not ids:
        raise ValueError("no Hub models given: pass --models org/name [org/name ...] or a file with one repo id per line")
    bad = [m for m in ids if m.split("@", 1)[0].count("/") != 1]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a Hub model id: expected org/name (optionally org/name@revision)")
    if len(set(ids)) != len(ids):
        dup = next(m for m in ids if ids.count(m) > 1)
        raise ValueError(f"{dup} is listed twice; every repo is one model of the zoo")
    return ids


def pin_revision(model: str) -> tuple[str, str]:
    """org/name[@revision] -> (repo id, commit sha)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = model.partition("@")
    try:
        return repo_id, HfApi().model_info(repo_id, revision=revision or None).sha
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ValueError(f"Hub model {model}: not found ({type(err).__name__}); check the id, the revision and your token") from err
    except HfHubHTTPError as err:
        raise ValueError(f"Hub model {model}: the Hub refused ({err})") from err


def download_model(repo_id: str, sha: str) -> Path:
    """The repo's config and weights at commit `sha`: a transformers folder, or the file model.safetensors."""
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download(repo_id, revision=sha, allow_patterns=WEIGHT_PATTERNS))
    if is_transformers_folder(local):
        return local
    if (local / "model.safetensors").is_file():
        return local / "model.safetensors"
    raise ValueError(f"Hub model {repo_id}@{sha} has neither config.json + weights (a transformers model) nor model.safetensors")


def import_hub_models(
    path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    models=None,
    architecture: str | None = None,
    architecture_kwargs: dict | None = None,
    task: str | None = None,
    seed: int = 0,
    models_per_shard: int = 16,
    progress: bool = True,
):
    """Make a zoo of Hub model repos (`models`, or a file of ids given as `path`) at `out_dir`; returns it loaded."""
    ids = read_model_ids(models if models is not None else path)
    pinned = [pin_revision(m) for m in ids]
    first = download_model(*pinned[0])
    kwargs = dict(architecture_kwargs or {})
    if architecture is not None:
        layout = WeightLayout.from_state_dict(build_model(architecture, **kwargs).state_dict())
    elif first.is_dir():
        architecture, kwargs = "transformers", {"config": read_config(first)}
        layout = WeightLayout.from_state_dict(build_model(architecture, **kwargs).state_dict())
    else:
        layout = WeightLayout.from_state_dict(read_checkpoint(first, f"{ids[0]} ({first.name})"))
    what = f"architecture {architecture}" if architecture else f"the layout of {ids[0]}"

    def read_repo(repo: tuple[str, str]):
        repo_id, sha = repo
        local = download_model(repo_id, sha)
        where = f"Hub model {repo_id}@{sha}" + ("" if local.is_dir() else f" ({local.name})")
        yield {"epoch": 0, "weights": flatten_state_dict(read_checkpoint(local, where), layout, where, what), "source": f"{repo_id}@{sha}"}

    info = {
        "name": Path(out_dir).name,
        "architecture": architecture,
        "architecture_kwargs": kwargs,
        "task": task,
        "config": {"source": "hub-models", "models": [f"{r}@{s}" for r, s in pinned], "description": f"Imported from {len(ids)} Hub model repos."},
    }
    fingerprint = {"format": "hub-models", "models": info["config"]["models"], "architecture": architecture, "seed": seed, "models_per_shard": models_per_shard}
    return write_zoo(
        out_dir, info, pinned, model_splits(len(pinned), seed, "the model list"), read_repo, layout=layout, extra_columns={"source": "string"},
        fingerprint=fingerprint, models_per_shard=models_per_shard, progress=progress, desc="import hub-models",
    )


__all__ = ["import_hub_models", "read_model_ids"]
