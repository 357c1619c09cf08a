"""File helpers shared by every writer of the library: atomic writes and folder-or-Hub lookup.

Every file hyperrep_hf writes goes through `atomic_save`: the content lands in a temporary file in
the target's folder and is renamed over the target, so a reader (or a resumed job after a kill)
never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_save(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)` to fill a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_save(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_save(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_config_file(path: str | os.PathLike) -> dict:
    """A YAML (.yaml/.yml) or JSON config file -> dict; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError: report the file, not a parser trace
        raise ValueError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option -> value, got {type(data).__name__}")
    return data


def resolve_file(folder_or_repo: str | os.PathLike, filename: str, missing_hint: str,
                 revision: str | None = None) -> str:
    """Local path of `filename` inside a checkpoint folder or a Hub repo id (downloaded to the cache,
    at `revision`: a branch, tag or commit; works offline once cached).

    Raises FileNotFoundError naming the file and `missing_hint` (what to run to create it).
    """
    folder = Path(folder_or_repo)
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; {missing_hint}")
        return str(path)
    from transformers.utils import cached_file

    pushed = "; `hyperrep push CHECKPOINT REPO_ID` uploads a checkpoint folder with its probes and anchors"
    try:
        found = cached_file(str(folder_or_repo), filename, revision=revision, _raise_exceptions_for_missing_entries=False)
    except OSError as err:
        raise FileNotFoundError(f"cannot read {filename} from {folder_or_repo!s} ({err}); {missing_hint}{pushed}") from err
    if found is None:
        at = f" at revision {revision}" if revision else ""
        raise FileNotFoundError(f"{folder_or_repo!s}{at} has no {filename}; {missing_hint}{pushed}")
    return found
