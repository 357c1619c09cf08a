"""The flat weight layout shared by zoos, the tokenizer and weight-space operations.

A model's weights travel as one flat vector: every floating-point entry of its state_dict
(parameters and float buffers such as BatchNorm running statistics), in state_dict order, each
flattened row-major. Integer buffers (BatchNorm's num_batches_tracked) carry no information about the
function and are left out. `WeightLayout` records names, shapes and offsets, so a flat vector [P]
turns back into a state_dict without a model object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class WeightEntry:
    """One tensor of the layout: its state_dict name, shape and dtype name (e.g. "float32")."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class WeightLayout:
    """Ordered float entries of a state_dict; `offsets[i]` is where entry i starts in the flat vector."""

    entries: list[WeightEntry]
    offsets: list[int] = field(init=False)

    def __post_init__(self):
        self.entries = [e if isinstance(e, WeightEntry) else WeightEntry(e[0], tuple(e[1]), *e[2:]) for e in self.entries]
        self.entries = [WeightEntry(e.name, tuple(int(s) for s in e.shape), e.dtype) for e in self.entries]
        self.offsets, total = [], 0
        for e in self.entries:
            self.offsets.append(total)
            total += e.numel
        self.num_weights = total

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> WeightLayout:
        """The layout of a state_dict's floating-point entries, in its order."""
        entries = [
            WeightEntry(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in state_dict.items()
            if torch.is_tensor(t) and t.is_floating_point()
        ]
        if not entries:
            raise ValueError("the state_dict holds no floating-point tensors: nothing to lay out (is the model empty?)")
        return cls(entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other) -> bool:
        return isinstance(other, WeightLayout) and self.entries == other.entries

    def check(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise a ValueError naming the first entry that is missing or has another shape."""
        for e in self.entries:
            if e.name not in state_dict:
                raise ValueError(f"state_dict lacks {e.name!r} (expected shape {list(e.shape)}); it does not match this layout")
            found = tuple(state_dict[e.name].shape)
            if found != e.shape:
                raise ValueError(f"{e.name!r} has shape {list(found)}, the layout expects {list(e.shape)}")

    def flatten(self, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """state_dict -> flat vector [num_weights] of `dtype`."""
        self.check(state_dict)
        return torch.cat([state_dict[e.name].detach().reshape(-1).to(dtype) for e in self.entries])

    def flatten_many(self, state_dicts, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A list of state_dicts -> [num_models, num_weights]."""
        return torch.stack([self.flatten(sd, dtype) for sd in state_dicts])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat vector [num_weights] -> state_dict of tensors in each entry's own dtype (copies)."""
        if flat.dim() != 1 or flat.numel() != self.num_weights:
            raise ValueError(f"expected a flat vector of {self.num_weights} weights, got shape {list(flat.shape)}")
        return {
            e.name: flat[o : o + e.numel].reshape(e.shape).to(getattr(torch, e.dtype), copy=True)
            for e, o in zip(self.entries, self.offsets)
        }

    def to_dict(self) -> dict:
        return {"entries": [[e.name, list(e.shape), e.dtype] for e in self.entries]}

    @classmethod
    def from_dict(cls, d: Mapping) -> WeightLayout:
        try:
            return cls([WeightEntry(n, tuple(s), dt) for n, s, dt in d["entries"]])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a weight layout record ({err}); expected {{'entries': [[name, shape, dtype], ...]}}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> WeightLayout:
        return cls.from_dict(json.loads(text))
