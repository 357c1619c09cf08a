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


def float_tensors(sd: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, t) for k, t in sd.items() if torch.is_tensor(t) and t.is_floating_point()]


def flatten_by_order(sd: Mapping[str, torch.Tensor], layout: WeightLayout, where: str, what: str) -> np.ndarray:
    """The float tensors of `sd`, in their order, as the flat vector [P] of `layout` (names ignored).

    Published zoos name tensors after module indices that shift with dropout, so order and shape are
    what identifies them. The error names the first tensor that differs.
    """
    floats = float_tensors(sd)
    for i, entry in enumerate(layout.entries):
        if i >= len(floats):
            raise ValueError(f"{where}: has {len(floats)} float tensors, {what} needs {len(layout.entries)}: {entry.name!r} {list(entry.shape)} and later are missing")
        name, t = floats[i]
        if tuple(t.shape) != entry.shape:
            raise ValueError(f"{where}: tensor {i} {name!r} has shape {list(t.shape)}, but {what} expects {entry.name!r} with shape {list(entry.shape)}")
    if len(floats) > len(layout.entries):
        extra = floats[len(layout.entries)]
        raise ValueError(f"{where}: has {len(floats)} float tensors, {what} only {len(layout.entries)}: {extra[0]!r} {list(extra[1].shape)} does not fit")
    return torch.cat([t.detach().reshape(-1).float() for _, t in floats]).numpy()


def flatten_state_dict(sd: Mapping[str, torch.Tensor], layout: WeightLayout, where: str, what: str) -> np.ndarray:
    """Flat vector [P] of `layout` from `sd`: by name when `sd` has every name of the layout, else by order and shape."""
    if all(e.name in sd for e in layout.entries):
        for e in layout.entries:
            if tuple(sd[e.name].shape) != e.shape:
                raise ValueError(f"{where}: tensor {e.name!r} has shape {list(sd[e.name].shape)}, but {what} expects {list(e.shape)}")
        return torch.cat([sd[e.name].detach().reshape(-1).float() for e in layout.entries]).numpy()
    return flatten_by_order(sd, layout, where, what)


__all__ = ["flatten_by_order", "flatten_state_dict", "read_state_dict", "torch_state_dict", "unwrap_state_dict"]
