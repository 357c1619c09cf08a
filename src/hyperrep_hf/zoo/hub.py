"""Share a zoo folder on the Hugging Face Hub (a dataset repo); load it back with load_zoo(repo_id)."""

from __future__ import annotations

import os
from pathlib import Path

from .card import write_card
from .dataset import read_zoo_info


def push_zoo(zoo_dir: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
             commit_message: str | None = None, revision: str | None = None) -> str:
    """Upload a finished zoo folder to the dataset repo `repo_id` (created if needed) in one commit, on
    branch `revision` (created from main if new; default main); returns the repo's URL.

    The parquet shards, zoo_config.json and the card (its YAML declares the splits and the features)
    travel; plain `datasets.load_dataset(repo_id)` and `load_zoo(repo_id)` load it back.
    """
    from huggingface_hub import HfApi

    path = Path(zoo_dir)
    info = read_zoo_info(path)
    if not info.get("complete", True):
        raise ValueError(f"{path} holds an unfinished build; finish it (rerun the build command) before pushing")
    write_card(path, info, repo_hint=repo_id)  # the card's usage example names the repo
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    api.upload_folder(
        folder_path=str(path),
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        allow_patterns=["data/*.parquet", "zoo_config.json", "README.md"],
        commit_message=commit_message or f"Upload model zoo {info.get('name', path.name)}",
    )
    return str(url)
