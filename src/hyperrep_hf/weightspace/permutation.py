"""Permutation symmetries of a network's weights, as index permutations of the flat weight vector.

Reordering the hidden neurons (channels) of a layer, together with everything that reads or
normalises them, leaves the network's function unchanged (METHOD.md §5). A `PermutationSpec` names
the groups of axes that one permutation acts on; for example the group of a hidden Linear layer
holds its weight's output axis, its bias, and the next Linear's input axis.

Convention (used everywhere in this package): applying permutation `p` of size n to an axis means
gathering along it, `new[..., i, ...] = old[..., p[i], ...]`. When that axis holds `block`
contiguous elements per neuron (a Linear after Flatten of a conv map: H*W columns per channel),
block i of the new tensor is block p[i] of the old one.

Because the flat vector of `hyperrep_hf.layout.WeightLayout` concatenates the state_dict entries, a
set of permutations becomes one index vector idx [P] with `permuted = flat[..., idx]`: a whole zoo
batch [M, P] with one permutation per model (idx [M, P]) is permuted by a single gather. One
permutation shared by all rows (a single model, or all checkpoints of one model) takes a cheaper
path: index_select on each permuted axis, no [P] index.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..layout import WeightLayout

Permutations = dict[str, torch.Tensor]
"""Group name -> LongTensor [n] (one model) or [M, n] (one permutation per model of a batch)."""


@dataclass(frozen=True)
class PermutedAxis:
    """One axis of one state_dict entry that a permutation group acts on.

    `block` is the number of contiguous elements along the axis per permuted neuron (1 except for a
    Linear reading a flattened conv map, where it is H*W): the axis has size `group size * block`.
    """

    entry: str
    axis: int
    block: int = 1


@dataclass(frozen=True)
class PermutationGroup:
    """A permutation of `size` neurons that acts on every axis in `axes` at once."""

    size: int
    axes: tuple[PermutedAxis, ...]


class PermutationSpec:
    """Named permutation groups of a network.

    Args:
        groups: group name -> `PermutationGroup`, or `(size, [(entry, axis), (entry, axis, block), ...])`.

    Example (a two-layer MLP "0" -> "2", hidden width 32):
        PermutationSpec({"0": (32, [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)])})
    """

    def __init__(self, groups: Mapping[str, PermutationGroup | tuple[int, Sequence]]):
        self.groups: dict[str, PermutationGroup] = {}
        seen: dict[tuple[str, int], str] = {}
        for name, group in groups.items():
            if not isinstance(group, PermutationGroup):
                size, axes = group
                group = PermutationGroup(int(size), tuple(a if isinstance(a, PermutedAxis) else PermutedAxis(*a) for a in axes))
            if group.size < 1:
                raise ValueError(f"permutation group {name!r} has size {group.size}; it must be at least 1")
            for ax in group.axes:
                key = (ax.entry, ax.axis)
                if key in seen:
                    raise ValueError(f"axis {ax.axis} of {ax.entry!r} is in two permutation groups ({seen[key]!r} and {name!r}); an axis can follow only one")
                seen[key] = name
            self.groups[name] = group

    def __repr__(self) -> str:
        return f"PermutationSpec({len(self.groups)} groups: " + ", ".join(f"{n}[{g.size}]" for n, g in self.groups.items()) + ")"

    def __eq__(self, other) -> bool:
        return isinstance(other, PermutationSpec) and self.groups == other.groups

    @property
    def sizes(self) -> dict[str, int]:
        return {name: g.size for name, g in self.groups.items()}

    def axes_by_entry(self) -> dict[str, list[tuple[int, str, int]]]:
        """entry name -> [(axis, group name, block), ...]: which permutations touch each tensor."""
        out: dict[str, list[tuple[int, str, int]]] = {}
        for name, group in self.groups.items():
            for ax in group.axes:
                out.setdefault(ax.entry, []).append((ax.axis, name, ax.block))
        return out

    def check(self, layout: WeightLayout) -> None:
        """Raise a ValueError naming the first axis that does not fit the layout's entries."""
        shapes = {e.name: e.shape for e in layout.entries}
        for name, group in self.groups.items():
            for ax in group.axes:
                if ax.entry not in shapes:
                    raise ValueError(f"permutation group {name!r} acts on {ax.entry!r}, which is not a float entry of the state_dict (is the spec for another architecture?)")
                shape = shapes[ax.entry]
                if not -len(shape) <= ax.axis < len(shape):
                    raise ValueError(f"permutation group {name!r} acts on axis {ax.axis} of {ax.entry!r}, which has shape {list(shape)}")
                if shape[ax.axis] != group.size * ax.block:
                    raise ValueError(
                        f"permutation group {name!r} (size {group.size}, block {ax.block}) needs axis {ax.axis} of {ax.entry!r} "
                        f"to have size {group.size * ax.block}, but it has shape {list(shape)}"
                    )

    def to_dict(self) -> dict:
        return {name: {"size": g.size, "axes": [[a.entry, a.axis, a.block] for a in g.axes]} for name, g in self.groups.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> PermutationSpec:
        try:
            return cls({name: (g["size"], [tuple(a) for a in g["axes"]]) for name, g in d.items()})
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a permutation spec record ({err}); expected {{group: {{'size': n, 'axes': [[entry, axis, block], ...]}}}}") from err

    def identity(self) -> Permutations:
        """The permutations that change nothing."""
        return {name: torch.arange(g.size) for name, g in self.groups.items()}

    def random(self, num_models: int | None = None, generator: torch.Generator | None = None) -> Permutations:
        """Uniformly random permutations: [n] per group, or [num_models, n] with one per model."""
        m = 1 if num_models is None else num_models
        perms = {name: torch.rand(m, g.size, generator=generator).argsort(dim=1) for name, g in self.groups.items()}
        return {k: v[0] for k, v in perms.items()} if num_models is None else perms

    def _check_permutations(self, perms: Mapping[str, torch.Tensor]) -> int | None:
        """Validate `perms`; return the batch size M of batched permutations, None for one model."""
        batch = None
        for name, group in self.groups.items():
            if name not in perms:
                raise ValueError(f"no permutation given for group {name!r}; pass one for every group of the spec ({list(self.groups)})")
            p = perms[name]
            if p.dim() not in (1, 2) or p.shape[-1] != group.size:
                raise ValueError(f"permutation of group {name!r} has shape {list(p.shape)}; expected [{group.size}] or [M, {group.size}]")
            if p.dim() == 2:
                if batch is not None and batch != p.shape[0]:
                    raise ValueError(f"batched permutations disagree on the number of models ({batch} vs {p.shape[0]} for {name!r})")
                batch = p.shape[0]
            if not torch.equal(p.sort(dim=-1).values, torch.arange(group.size).expand_as(p)):
                raise ValueError(f"the permutation of group {name!r} is not a permutation of 0..{group.size - 1}")
        return batch

    def permutation_index(self, layout: WeightLayout, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Index of the permuted flat vector: LongTensor [P] (or [M, P] for batched `perms`) with
        `permuted = flat.gather(-1, idx)`. Each element's source index is the sum over its axes of
        (source position along the axis) * (row-major stride), plus the entry's offset."""
        self.check(layout)
        batch = self._check_permutations(perms)
        m = 1 if batch is None else batch
        by_entry = self.axes_by_entry()
        pieces = []
        for entry, offset in zip(layout.entries, layout.offsets):
            shape = entry.shape
            if entry.name not in by_entry:
                pieces.append(torch.arange(offset, offset + entry.numel).expand(m, -1))
                continue
            acting = {axis % len(shape): (group, block) for axis, group, block in by_entry[entry.name]}
            idx = torch.full((m,) + (1,) * len(shape), offset, dtype=torch.long)
            for axis, size in enumerate(shape):
                stride = math.prod(shape[axis + 1 :])
                if axis in acting:
                    group, block = acting[axis]
                    p = perms[group].reshape(-1, self.groups[group].size).expand(m, -1)
                    src = (p[:, :, None] * block + torch.arange(block)).reshape(m, size)
                else:
                    src = torch.arange(size).expand(m, -1)
                view = [m] + [1] * len(shape)
                view[axis + 1] = size
                idx = idx + (src * stride).reshape(view)
            pieces.append(idx.reshape(m, -1))
        index = torch.cat(pieces, dim=1)
        return index[0] if batch is None else index


def permute_flat(flat: torch.Tensor, layout: WeightLayout, spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Permute flat weights [P] or a batch [M, P]; batched `perms` ([M, n]) give each row its own."""
    if flat.shape[-1] != layout.num_weights or flat.dim() not in (1, 2):
        raise ValueError(f"expected flat weights [P] or [M, P] with P = {layout.num_weights}, got shape {list(flat.shape)}")
    if spec._check_permutations(perms) is None:
        return _permute_shared(flat, layout, spec, perms)
    idx = spec.permutation_index(layout, perms)
    if flat.dim() == 1 or flat.shape[0] != idx.shape[0]:
        raise ValueError(f"{idx.shape[0]} batched permutations do not fit flat weights of shape {list(flat.shape)}")
    return flat.gather(1, idx.to(flat.device))


def expand_block(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Permutation of n neurons [n] -> index of the n * block elements along the axis [n * block]."""
    return (perm[:, None] * block + torch.arange(block)).reshape(-1)


def _permute_shared(flat: torch.Tensor, layout: WeightLayout, spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One set of permutations for every row: index_select each permuted axis of each entry. For a
    single model this is faster than building and gathering a full index [P] (ResNet-18: 11M)."""
    spec.check(layout)
    lead = flat.shape[:-1]
    by_entry = spec.axes_by_entry()
    pieces = []
    for entry, offset in zip(layout.entries, layout.offsets):
        values = flat[..., offset : offset + entry.numel]
        if entry.name in by_entry:
            values = values.reshape(*lead, *entry.shape)
            for axis, group, block in by_entry[entry.name]:
                src = expand_block(perms[group], block).to(flat.device)
                values = values.index_select(len(lead) + axis % len(entry.shape), src)
            values = values.reshape(*lead, entry.numel)
        pieces.append(values)
    return torch.cat(pieces, dim=-1)


def permute_state_dict(state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A permuted copy of a state_dict; integer buffers (num_batches_tracked) are kept as they are."""
    layout = WeightLayout.from_state_dict(state_dict)
    permuted = layout.unflatten(permute_flat(layout.flatten(state_dict, torch.float64), layout, spec, perms))
    return {k: permuted.get(k, v) for k, v in state_dict.items()}


def permute_model(model: nn.Module, perms: Mapping[str, torch.Tensor], spec: PermutationSpec | None = None) -> nn.Module:
    """A permuted copy of `model` (the spec is derived from the model when not given)."""
    spec = permutation_spec(model) if spec is None else spec
    out = copy.deepcopy(model)
    out.load_state_dict(permute_state_dict(model.state_dict(), spec, perms))
    return out


def random_permutation(weights, spec: PermutationSpec | None = None, *, layout: WeightLayout | None = None, generator: torch.Generator | None = None):
    """Randomly permute the hidden neurons of a model without changing its function.

    `weights` is an nn.Module (returns a permuted copy; spec derived if not given), a state_dict
    (returns a permuted state_dict; `spec` required), or flat weights [P] / a zoo batch [M, P]
    (`spec` and `layout` required; every row of a batch gets its own permutation).
    """
    if isinstance(weights, nn.Module):
        spec = permutation_spec(weights) if spec is None else spec
        return permute_model(weights, spec.random(generator=generator), spec)
    if spec is None:
        raise ValueError("random_permutation of a state_dict or flat weights needs a spec: pass spec=permutation_spec(model)")
    if isinstance(weights, Mapping):
        return permute_state_dict(weights, spec, spec.random(generator=generator))
    if torch.is_tensor(weights):
        if layout is None:
            raise ValueError("flat weights need their layout: pass layout=WeightLayout.from_state_dict(model.state_dict())")
        num_models = weights.shape[0] if weights.dim() == 2 else None
        return permute_flat(weights, layout, spec, spec.random(num_models, generator))
    raise ValueError(f"cannot permute a {type(weights).__name__}; pass an nn.Module, a state_dict or a flat weight tensor")


# --- Deriving specs from models -------------------------------------------------------------

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules that act on each neuron/channel alone (or pool within a channel): they commute with a
# permutation of channels.
_CHANNELWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)


def _leaves(module: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        out += _leaves(child, full + ".") if isinstance(child, nn.Sequential) else [(full, child)]
    return out


def _unsupported(name: str, module: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"cannot derive a permutation spec through module {name!r} ({type(module).__name__}): {why}; "
        "pass an explicit PermutationSpec instead"
    )


def spec_from_sequential(model: nn.Sequential) -> PermutationSpec:
    """The permutation spec of an nn.Sequential stack of Linear / Conv / ConvTranspose / BatchNorm /
    channel-wise activations, pooling and dropout / Flatten (nested Sequentials allowed).

    Each weight layer's outputs form a group named after the layer (e.g. "4" for `model[4]`), except
    the last weight layer's, which are the network's outputs. A Linear after Flatten of a conv map
    [C, H, W] reads H*W contiguous columns per channel; H*W is read off its in_features.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"spec_from_sequential needs an nn.Sequential, got {type(model).__name__}; pass an explicit PermutationSpec")
    leaves = _leaves(model)
    weight_layers = [i for i, (_, m) in enumerate(leaves) if isinstance(m, _WEIGHT_LAYERS)]
    if not weight_layers:
        raise ValueError("the model has no Linear or Conv layer: there is nothing to permute")
    last = weight_layers[-1]
    groups: dict[str, tuple[int, list]] = {}
    current: str | None = None  # group of the features flowing between layers (None: not permuted)
    block = 1  # contiguous features per permuted neuron (H*W after Flatten of a conv map)
    flattened = False
    spatial = False  # conv feature maps flow: a Linear needs a Flatten first
    for i, (name, module) in enumerate(leaves):
        has_bias = getattr(module, "bias", None) is not None
        if isinstance(module, _WEIGHT_LAYERS):
            if getattr(module, "groups", 1) != 1:
                raise _unsupported(name, module, "grouped convolutions tie input and output channels")
            transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            in_axis, out_axis = (0, 1) if transposed else (1, 0)
            if isinstance(module, nn.Linear) and spatial and current is not None:
                raise _unsupported(name, module, "it reads a conv feature map without a Flatten before it")
            if current is not None:
                size = groups[current][0]
                fan_in = module.weight.shape[in_axis]
                if flattened:
                    if not isinstance(module, nn.Linear) or fan_in % size:
                        raise _unsupported(name, module, f"it reads a flattened map of {size} channels but has {fan_in} inputs")
                    block = fan_in // size
                groups[current][1].append((f"{name}.weight", in_axis, block))
            current, block, flattened = None, 1, False
            spatial = not isinstance(module, nn.Linear)
            if i != last:
                current = name
                groups[name] = (module.weight.shape[out_axis], [(f"{name}.weight", out_axis)])
                if has_bias:
                    groups[name][1].append((f"{name}.bias", 0))
        elif isinstance(module, _NORMS):
            if current is not None:
                if flattened:  # BatchNorm1d over a flattened conv map: num_features = C * H * W
                    size = groups[current][0]
                    if module.num_features % size:
                        raise _unsupported(name, module, f"it normalises a flattened map of {size} channels but has {module.num_features} features")
                    block = module.num_features // size
                entries = [("weight", module.affine), ("bias", module.affine), ("running_mean", module.track_running_stats), ("running_var", module.track_running_stats)]
                groups[current][1].extend((f"{name}.{e}", 0, block) for e, present in entries if present)
        elif isinstance(module, nn.Flatten):
            if current is not None:
                if module.start_dim != 1 or module.end_dim != -1:
                    raise _unsupported(name, module, "only Flatten(start_dim=1, end_dim=-1) is supported")
                flattened = True
            spatial = False
        elif isinstance(module, _CHANNELWISE) or (current is None and i > last and not any(True for _ in module.parameters())):
            continue  # commutes with channel permutations, or acts on the (never permuted) outputs
        else:
            raise _unsupported(name, module, "its effect on a permutation of neurons is unknown")
    return PermutationSpec(groups)


def spec_for_resnet(model: nn.Module) -> PermutationSpec:
    """The permutation spec of `hyperrep_hf.zoo.architectures.ResNet` (BasicBlocks).

    The identity shortcut adds a block's input to its output, so the stem, every block's conv2/bn2
    and the shortcut convs of one stage share one permutation (groups "stem" for the stem and
    layer1, "layerK.residual" for later stages); each block's conv1/bn1 gets its own ("layerK.J.conv1").
    """
    from ..zoo.architectures import BasicBlock

    def conv_bn(conv: str, bn: str, group: list) -> None:
        group.append((f"{conv}.weight", 0))
        group.extend((f"{bn}.{e}", 0) for e in ("weight", "bias", "running_mean", "running_var"))

    groups: dict[str, tuple[int, list]] = {}
    residual = "stem"
    groups[residual] = (model.conv1.out_channels, [])
    conv_bn("conv1", "bn1", groups[residual][1])
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for j, block in enumerate(getattr(model, stage)):
            if not isinstance(block, BasicBlock):
                raise _unsupported(f"{stage}.{j}", block, "only BasicBlock ResNets are supported")
            b = f"{stage}.{j}"
            groups[f"{b}.conv1"] = (block.conv1.out_channels, [])
            conv_bn(f"{b}.conv1", f"{b}.bn1", groups[f"{b}.conv1"][1])
            groups[residual][1].append((f"{b}.conv1.weight", 1))
            groups[f"{b}.conv1"][1].append((f"{b}.conv2.weight", 1))
            if len(block.shortcut) > 0:  # a 1x1 projection starts a new residual stream
                groups[residual][1].append((f"{b}.shortcut.0.weight", 1))
                residual = f"{stage}.residual"
                groups[residual] = (block.conv2.out_channels, [])
                conv_bn(f"{b}.shortcut.0", f"{b}.shortcut.1", groups[residual][1])
            conv_bn(f"{b}.conv2", f"{b}.bn2", groups[residual][1])
    groups[residual][1].append(("linear.weight", 1))
    return PermutationSpec(groups)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """Derive the permutation spec of a zoo ResNet or of a sequential MLP/CNN stack (VGG included)."""
    from ..zoo.architectures import ResNet

    if isinstance(model, ResNet):
        return spec_for_resnet(model)
    if isinstance(model, nn.Sequential):
        return spec_from_sequential(model)
    raise ValueError(
        f"cannot derive a permutation spec for {type(model).__name__}: only nn.Sequential stacks and the zoo ResNet are known; "
        "pass an explicit PermutationSpec"
    )
