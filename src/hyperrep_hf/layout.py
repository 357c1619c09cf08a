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

    @property
    def structure(self) -> list[tuple[tuple[int, ...], str]]:
        """(shape, kind) of every entry in order; the kind is the name's last part ("weight", "bias",
        "running_mean", ...). Two models with the same structure have the same architecture."""
        return [(e.shape, _kind(e.name)) for e in self.entries]

    def match(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state_dict of this architecture under any names -> {this layout's name: tensor}.

        Names are used when they are this layout's own; otherwise tensors are matched by structure:
        the floating-point entries in the state_dict's order (an nn.Module's order), or in module
        order when the keys come sorted (as safetensors files store them), must have this layout's
        sequence of shapes and kinds. Raises ValueError naming the first tensor that differs.
        """
        floats = [(n, t) for n, t in state_dict.items() if torch.is_tensor(t) and t.is_floating_point()]
        by_name = dict(floats)
        if set(by_name) == set(self.names) and all(tuple(by_name[e.name].shape) == e.shape for e in self.entries):
            return {e.name: by_name[e.name] for e in self.entries}
        for order in (floats, sorted(floats, key=lambda item: _module_order(item[0]))):
            if [(tuple(t.shape), _kind(n)) for n, t in order] == self.structure:
                return {e.name: t for e, (_, t) in zip(self.entries, order)}
        raise ValueError(self.difference(floats))

    def difference(self, floats: list[tuple[str, torch.Tensor]]) -> str:
        """Where tensors [(name, tensor)] in order first differ from this layout, in words."""
        for i, (e, (name, t)) in enumerate(zip(self.entries, floats)):
            if (tuple(t.shape), _kind(name)) != (e.shape, _kind(e.name)):
                return (f"tensor {i} of the model, {name!r} of shape {list(t.shape)}, differs from the layout, "
                        f"which expects {e.name!r} of shape {list(e.shape)} there")
        return (f"the model has {len(floats)} floating-point tensors, the layout {len(self.entries)}: the first "
                f"{min(len(floats), len(self.entries))} agree, then "
                + (f"the model has {floats[len(self.entries)][0]!r} too" if len(floats) > len(self.entries)
                   else f"the layout expects {self.entries[len(floats)].name!r} too"))

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


# Within one module, the order nn.Module.state_dict() lists its tensors in.
_KIND_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def _kind(name: str) -> str:
    return name.rpartition(".")[2]


def _module_order(name: str) -> tuple:
    """Sort key that restores module order from sorted keys: numeric parts compare as numbers
    ("features.10" after "features.9"), and a module's weight comes before its bias."""
    prefix, _, leaf = name.rpartition(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in prefix.split(".")) if prefix else ()
    return parts, _KIND_ORDER.get(leaf, len(_KIND_ORDER)), leaf
