"""Small file helpers shared by probes and sampling anchors: atomic writes, folder-or-Hub lookup."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and os.replace, so a reader
    never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def resolve_file(folder_or_repo: str | os.PathLike, filename: str, missing_hint: str) -> str:
    """Local path of `filename` inside a checkpoint folder or a Hub repo id (downloaded to the cache).

    Raises FileNotFoundError naming the file and `missing_hint` (what to run to create it).
    """
    folder = Path(folder_or_repo)
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; {missing_hint}")
        return str(path)
    from transformers.utils import cached_file

    try:
        found = cached_file(str(folder_or_repo), filename, _raise_exceptions_for_missing_entries=False)
    except OSError as err:
        raise FileNotFoundError(f"cannot read {filename} from {folder_or_repo!s} ({err}); {missing_hint}") from err
    if found is None:
        raise FileNotFoundError(f"{folder_or_repo!s} has no {filename}; {missing_hint}")
    return found
