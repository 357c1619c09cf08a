"""Alignment of a model to a reference model by weight matching (Git Re-Basin style).

For one permutation group at a time, with the other groups' permutations held fixed, the best
permutation maximises sum_i <reference neuron i, model neuron p[i]> over every tensor the group
touches: a linear assignment problem (scipy's linear_sum_assignment). Groups are visited in random
order until a full sweep changes nothing, at most `max_iterations` sweeps (METHOD.md §3).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..layout import WeightLayout
from .permutation import (
    Permutations,
    PermutationSpec,
    expand_block,
    permutation_spec,
    permute_flat,
    permute_model,
    permute_state_dict,
)


def _rows(tensor: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """[..., n * block (at axis), ...] -> [n, everything else]: one row per permuted neuron."""
    moved = tensor.movedim(axis, 0)
    return moved.reshape(moved.shape[0] // block, -1)


def weight_matching(
    weights: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    *,
    max_iterations: int = 100,
    generator: torch.Generator | None = None,
) -> Permutations:
    """Permutations ([n] per group) that bring `weights` closest to `reference` (state_dicts).

    Applying them (`permute_state_dict(weights, spec, perms)`) gives the aligned model.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    w = {k: v.detach().to(torch.float64) for k, v in weights.items() if v.is_floating_point()}
    ref = {k: v.detach().to(torch.float64) for k, v in reference.items() if v.is_floating_point()}
    by_entry = spec.axes_by_entry()
    perms = spec.identity()
    names = list(spec.groups)
    for _ in range(max_iterations):
        changed = False
        for g in torch.randperm(len(names), generator=generator).tolist():
            name, group = names[g], spec.groups[names[g]]
            similarity = torch.zeros(group.size, group.size, dtype=torch.float64)
            for ax in group.axes:
                other = w[ax.entry]
                for axis, other_group, block in by_entry[ax.entry]:
                    if axis != ax.axis:  # the other groups acting on this tensor, as they stand now
                        other = other.index_select(axis, expand_block(perms[other_group], block))
                # similarity[i, j] = <reference neuron i, model neuron j>
                similarity += _rows(ref[ax.entry], ax.axis, ax.block) @ _rows(other, ax.axis, ax.block).T
            _, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            if not torch.equal(new, perms[name]):
                # Only a strict gain counts as a change: ties must not make the sweeps cycle.
                old_score = similarity[torch.arange(group.size), perms[name]].sum()
                new_score = similarity[torch.arange(group.size), new].sum()
                if new_score > old_score + 1e-12 * abs(old_score):
                    perms[name], changed = new, True
        if not changed:
            break
    return perms


def _check_same_layout(layout: WeightLayout, ref_layout: WeightLayout) -> None:
    for e, r in zip(layout.entries, ref_layout.entries):
        if (e.name, e.shape) != (r.name, r.shape):
            raise ValueError(f"the model and the reference have different layouts: entry {e.name!r} {list(e.shape)} vs reference {r.name!r} {list(r.shape)}")
    if len(layout) != len(ref_layout):
        raise ValueError(f"the model has {len(layout)} weight entries, the reference {len(ref_layout)}: different architectures cannot be aligned")


def align(weights, reference, spec: PermutationSpec | None = None, *, layout: WeightLayout | None = None, max_iterations: int = 100, generator: torch.Generator | None = None):
    """Permute `weights` to match `reference` by weight matching; returns `(aligned, perms)`.

    `weights` and `reference` are each an nn.Module, a state_dict or flat weights [P] (flat needs
    `layout`); `aligned` has the type of `weights`. The spec is derived from a module when not given.
    """
    if spec is None:
        model = weights if isinstance(weights, nn.Module) else reference if isinstance(reference, nn.Module) else None
        if model is None:
            raise ValueError("align needs a spec for state_dicts or flat weights: pass spec=permutation_spec(model)")
        spec = permutation_spec(model)

    def as_state_dict(x, what):
        if isinstance(x, nn.Module):
            return x.state_dict()
        if isinstance(x, Mapping):
            return x
        if torch.is_tensor(x):
            if layout is None:
                raise ValueError(f"flat {what} weights need their layout: pass layout=WeightLayout.from_state_dict(model.state_dict())")
            if x.shape != (layout.num_weights,):
                raise ValueError(f"flat {what} weights have shape {list(x.shape)}, the layout expects [{layout.num_weights}]")
            return layout.unflatten(x)
        raise ValueError(f"cannot align a {type(x).__name__}; pass an nn.Module, a state_dict or flat weights [P]")

    sd, ref = as_state_dict(weights, "model"), as_state_dict(reference, "reference")
    sd_layout = WeightLayout.from_state_dict(sd)
    _check_same_layout(sd_layout, WeightLayout.from_state_dict(ref))
    spec.check(sd_layout)
    perms = weight_matching(sd, ref, spec, max_iterations=max_iterations, generator=generator)
    if isinstance(weights, nn.Module):
        return permute_model(weights, perms, spec), perms
    if isinstance(weights, Mapping):
        return permute_state_dict(weights, spec, perms), perms
    return permute_flat(weights, layout, spec, perms), perms


def align_checkpoints(checkpoints: torch.Tensor, reference: torch.Tensor, layout: WeightLayout, spec: PermutationSpec, **kwargs) -> tuple[torch.Tensor, Permutations]:
    """Align all checkpoints (epochs) of one model with the permutation found on its last one.

    checkpoints [E, P] (epoch order, last row = final epoch), reference [P] -> (aligned [E, P], perms).
    """
    if checkpoints.dim() != 2:
        raise ValueError(f"expected the checkpoints of one model as [epochs, P], got shape {list(checkpoints.shape)}")
    _, perms = align(checkpoints[-1], reference, spec, layout=layout, **kwargs)
    return permute_flat(checkpoints, layout, spec, perms), perms
