"""Reading checkpoints from elsewhere (never unpickling) and fitting them to a weight layout."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ...layout import WeightLayout

# wrappers people save around a state_dict
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")


def unwrap_state_dict(obj, where: str) -> dict[str, torch.Tensor]:
    """A state_dict, or the one inside {"state_dict": ...} / {"model": ...} / {"model_state_dict": ...}."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{where}: holds no state_dict (a dict of tensors)")
    return {k: v for k, v in obj.items() if torch.is_tensor(v)}


def torch_state_dict(data: bytes | str | Path, where: str) -> dict[str, torch.Tensor]:
    """torch.save'd state_dict (file path or bytes), loaded with weights_only=True: tensors only, no code."""
    try:
        obj = torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt, foreign or code-carrying file
        raise ValueError(
            f"{where}: not a readable torch checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "only plain state_dicts load (weights_only=True): re-save it with torch.save(model.state_dict(), path)"
        ) from err
    return unwrap_state_dict(obj, where)


def safetensors_state_dict(path: str | Path, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{where}: not a readable safetensors file ({err})") from err


def read_state_dict(path: str | Path, where: str | None = None) -> dict[str, torch.Tensor]:
    """A `.safetensors` file or a torch state_dict file (`.pt`, `.pth`, `.bin`, or no suffix)."""
    where = where or str(path)
    if str(path).endswith(".safetensors"):
        return safetensors_state_dict(path, where)
    return torch_state_dict(str(path), where)


def flatten_state_dict(sd: Mapping[str, torch.Tensor], layout: WeightLayout, where: str, what: str) -> np.ndarray:
    """Flat vector [P] of `layout` from `sd`, matched by structure (WeightLayout.match: by name when the
    names are the layout's own, else by order and shape: published zoos name tensors after module
    indices that shift with dropout). The error names the file and the first tensor that differs."""
    try:
        tensors = layout.match(sd)
    except ValueError as err:
        raise ValueError(f"{where}: does not fit {what}: {err}") from err
    return layout.flatten(tensors).numpy()


__all__ = ["flatten_state_dict", "read_state_dict", "torch_state_dict", "unwrap_state_dict"]
