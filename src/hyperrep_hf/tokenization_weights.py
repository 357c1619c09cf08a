"""The SANE weight tokenizer: model weights <-> sequences of same-size tokens, exactly.

Each weight tensor is viewed as rows [c_out, rest] (one row per output neuron / channel; conv kernels
flattened per output channel; ConvTranspose keeps its output channels on dim 1 and is handled as
such), the matching bias is appended as one extra column, rows longer than `token_size` are split
into ceil(len / token_size) chunks and every token is zero-padded to `token_size`. Each token has a
position (n, l, k): n = index in the model's sequence, l = layer index, k = output channel within
the layer (the chunks of one channel share k).

A "layer" (one l) is one `LayerSpec`: a weight tensor plus an optional bias. BatchNorm gives three
layers: the affine pair (weight, bias: one 2-value token per channel), running_mean and running_var
(one 1-value token per channel each). They are separate layers because their scales differ by
orders of magnitude, so each gets its own standardisation statistics; num_batches_tracked carries
no information about the function and is restored as 0 on decode.

Speed: for each layout the tokenizer precomputes where every layer's block of tokens starts; a
layer's block of tokens, viewed as [models, c_out, n_chunks * token_size], takes the weight rows in
one strided copy. So tokenizing costs one Python step per layer (never per channel or per model):
a batch of a whole zoo [M, P] goes through the same code as one model (M = 1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin

from .files import atomic_write_text
from .layout import WeightEntry, WeightLayout

__all__ = ["LayerSpec", "TokenLayout", "WeightTokenizer", "register_layer_handler"]

FORMAT_VERSION = 1
STATISTICS = ("median", "mean")
# How a layout's tokens are standardised (TokenLayout.normalization):
#   "layer": per-layer statistics fitted on a zoo's train split (fit_standardization; the published way).
#   "model": each model's layer l by its own mean and std (no zoo needed: models of an architecture
#            that was in no training zoo); the statistics travel with the encoding ("token_stats").
#   "token": each token by the mean and std of its own real values (the MultiZoo-SANE per-token
#            normalisation moved from the loss to the input; a 1-value token becomes 0).
# The study (scripts/study_generalisation.py, README "Generalisation") chooses between "model" and
# "token" for unseen architectures on validation data.
NORMALIZATIONS = ("layer", "model", "token")
# A decoded (generated) BatchNorm running_var below zero would make BatchNorm divide by the root of
# a negative number (NaN); it is raised to this floor, BatchNorm's default eps. A real model's
# running_var is never negative, so the decode of a tokenized model stays exact.
RUNNING_VAR_FLOOR = 1e-5


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the token sequence: a weight tensor viewed as rows, plus an optional bias column.

    weight, bias: state_dict names (inside a layer handler: names local to the module).
    channel_dim: the dim of `weight` that indexes output channels (1 for ConvTranspose).
    groups: with channel_dim=1, the weight is [in, out / groups, *kernel] (ConvTranspose groups).
    """

    weight: str
    bias: str | None = None
    channel_dim: int = 0
    groups: int = 1

    def prefixed(self, prefix: str) -> LayerSpec:
        p = f"{prefix}." if prefix else ""
        return LayerSpec(p + self.weight, p + self.bias if self.bias else None, self.channel_dim, self.groups)

    def to_list(self) -> list:
        return [self.weight, self.bias, self.channel_dim, self.groups]


# ---------------------------------------------------------------------------------------------
# Layer handlers: module type -> fn(module) -> list[LayerSpec] with names local to the module.
# ---------------------------------------------------------------------------------------------

LayerHandler = Callable[[nn.Module], list[LayerSpec]]
LAYER_HANDLERS: dict[type, LayerHandler] = {}


def register_layer_handler(module_type: type, handler: LayerHandler) -> None:
    """Teach the tokenizer a module type that holds parameters itself.

    `handler(module)` returns the module's layers as LayerSpecs named locally, e.g.
    `lambda m: [LayerSpec("weight", "bias")]`; every floating-point parameter and buffer the module
    holds directly must appear in exactly one spec. Subclasses of `module_type` use it too.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise ValueError(f"register_layer_handler needs an nn.Module subclass, got {module_type!r}")
    if not callable(handler):
        raise ValueError("register_layer_handler needs a callable handler(module) -> list[LayerSpec]")
    LAYER_HANDLERS[module_type] = handler


def _weight_and_bias(m: nn.Module) -> list[LayerSpec]:
    if getattr(m, "weight", None) is None:  # e.g. LayerNorm(elementwise_affine=False) with a bias only
        return [LayerSpec("bias")] if getattr(m, "bias", None) is not None else []
    return [LayerSpec("weight", "bias" if getattr(m, "bias", None) is not None else None)]


def _conv_transpose(m: nn.Module) -> list[LayerSpec]:
    # ConvTranspose weights are [in, out / groups, *kernel]: output channels sit on dim 1.
    return [LayerSpec("weight", "bias" if m.bias is not None else None, channel_dim=1, groups=m.groups)]


def _norm_with_stats(m: nn.Module) -> list[LayerSpec]:
    specs = _weight_and_bias(m)
    if getattr(m, "running_mean", None) is not None:
        specs += [LayerSpec("running_mean"), LayerSpec("running_var")]
    return specs


def _multihead_attention(m: nn.MultiheadAttention) -> list[LayerSpec]:
    # out_proj is a Linear child and handled there; this covers the parameters MHA holds itself.
    specs = []
    if m.in_proj_weight is not None:  # q, k, v stacked: rows are the 3 * embed_dim output neurons
        specs.append(LayerSpec("in_proj_weight", "in_proj_bias" if m.in_proj_bias is not None else None))
    else:  # kdim / vdim differ from embed_dim: three separate projections, one shared bias vector
        specs += [LayerSpec("q_proj_weight"), LayerSpec("k_proj_weight"), LayerSpec("v_proj_weight")]
        if m.in_proj_bias is not None:
            specs.append(LayerSpec("in_proj_bias"))
    if m.bias_k is not None:
        specs += [LayerSpec("bias_k"), LayerSpec("bias_v")]
    return specs


for _t in (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm,
           nn.RMSNorm, nn.Embedding, nn.EmbeddingBag, nn.PReLU):
    register_layer_handler(_t, _weight_and_bias)
register_layer_handler(nn.modules.conv._ConvTransposeNd, _conv_transpose)
register_layer_handler(nn.modules.batchnorm._NormBase, _norm_with_stats)  # BatchNorm, InstanceNorm
register_layer_handler(nn.MultiheadAttention, _multihead_attention)


def _handler_for(module: nn.Module) -> LayerHandler | None:
    for cls in type(module).__mro__:
        if cls in LAYER_HANDLERS:
            return LAYER_HANDLERS[cls]
    return None


def layers_from_model(model: nn.Module) -> list[LayerSpec]:
    """The model's layers in state_dict order, from its module types.

    Raises ValueError for a module type without a handler that holds floating-point tensors itself.
    """
    specs = []
    for path, module in model.named_modules(remove_duplicate=False):
        own = [n for n, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
               if t is not None and t.is_floating_point()]
        if not own:
            continue
        handler = _handler_for(module)
        if handler is None:
            raise ValueError(
                f"module {path or '<root>'!r} of type {type(module).__name__} holds weights {own} but the "
                f"tokenizer has no handler for {type(module).__name__}; register one with "
                f"WeightTokenizer.register_layer_handler({type(module).__name__}, "
                f"lambda m: [LayerSpec('weight', 'bias')])"
            )
        local = handler(module)
        claimed = [n for s in local for n in (s.weight, s.bias) if n]
        missing = sorted(set(own) - set(claimed))
        if missing:
            raise ValueError(
                f"the layer handler for {type(module).__name__} (module {path or '<root>'!r}) leaves "
                f"{missing} out; every floating-point tensor must be in one LayerSpec"
            )
        specs += [s.prefixed(path) for s in local]
    return specs


def layers_from_state_dict(layout: WeightLayout) -> list[LayerSpec]:
    """Layers inferred from names alone (no model): `<module>.weight` pairs with `<module>.bias`
    when the bias has one value per row, `in_proj_weight` with `in_proj_bias`; every other entry
    is a layer of its own. Rows are along dim 0, so a ConvTranspose read from a bare state_dict is
    chunked by input channel (still exact); tokenize the model object to get its true channels."""
    shapes = {e.name: e.shape for e in layout.entries}
    specs, used = [], set()
    for name, shape in shapes.items():
        if name in used:
            continue
        prefix, _, leaf = name.rpartition(".")
        bias = None
        if leaf in ("weight", "in_proj_weight") and len(shape) >= 1:
            cand = (f"{prefix}." if prefix else "") + leaf.replace("weight", "bias")
            if cand in shapes and shapes[cand] == (shape[0],) and cand not in used:
                bias = cand
        specs.append(LayerSpec(name, bias))
        used.update([name, bias])
    return specs


# ---------------------------------------------------------------------------------------------
# TokenLayout: one architecture's token plan.
# ---------------------------------------------------------------------------------------------


@dataclass
class _Block:
    """Where one layer's tokens live: tokens[n0:n1] viewed as [c_out, n_chunks * token_size]."""

    spec: LayerSpec
    weight: WeightEntry
    weight_offset: int
    bias: WeightEntry | None
    bias_offset: int
    c_out: int
    rest: int  # weight values per row
    length: int  # real values per row: rest (+1 with a bias)
    n_chunks: int
    n0: int
    n1: int


class TokenLayout:
    """Token plan of one architecture: the flat WeightLayout, its layers and the token size.

    Attributes: num_tokens N, token_size T, positions [N, 3] int64 (n, l, k), value_mask [N, T]
    bool (real values), layer_of_token [N] int64, names of layers, optional standardisation
    statistics mean/std [num_layers] float64 with the soft clip c (None: linear), optional
    alignment {"reference": [P] float32, "spec": PermutationSpec as a dict}, optional permutation
    (the architecture's PermutationSpec as a dict, for permutation-averaged embeddings).
    """

    def __init__(self, weights: WeightLayout, layers: list[LayerSpec], token_size: int,
                 restored: list[list] | None = None, mean=None, std=None, alignment: Mapping | None = None,
                 permutation: Mapping | None = None, clip: float | None = None, normalization: str = "layer"):
        self.weights, self.layers, self.token_size = weights, list(layers), int(token_size)
        self.normalization = check_normalization(normalization)
        self.clip = None if clip is None else float(clip)
        self.permutation = None if permutation is None else dict(permutation)
        self.alignment = None if alignment is None else {
            "reference": torch.as_tensor(alignment["reference"], dtype=torch.float32), "spec": dict(alignment["spec"])}
        self.restored = [list(r) for r in (restored or [])]  # [[name, shape, dtype]] of integer buffers
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float64)
        if self.token_size < 1:
            raise ValueError(f"token_size must be a positive integer, got {token_size}")
        entries = {e.name: (e, o) for e, o in zip(weights.entries, weights.offsets)}
        claimed: dict[str, str] = {}
        self.blocks, n = [], 0
        for spec in self.layers:
            for name in (spec.weight, spec.bias):
                if name is None:
                    continue
                if name not in entries:
                    raise ValueError(f"layer {spec.weight!r} names {name!r}, which is not a floating-point "
                                     f"entry of the state_dict")
                if name in claimed:
                    raise ValueError(f"{name!r} is in two layers ({claimed[name]!r} and {spec.weight!r})")
                claimed[name] = spec.weight
            w, wo = entries[spec.weight]
            shape = w.shape or (1,)
            c_out = _channels(spec, shape)
            rest = math.prod(shape) // c_out
            b, bo = entries[spec.bias] if spec.bias else (None, 0)
            if b is not None and b.numel != c_out:
                raise ValueError(f"bias {spec.bias!r} has {b.numel} values, its layer {spec.weight!r} has "
                                 f"{c_out} output channels")
            length = rest + (b is not None)
            n_chunks = -(-length // self.token_size)
            self.blocks.append(_Block(spec, w, wo, b, bo, c_out, rest, length, n_chunks, n, n + c_out * n_chunks))
            n += c_out * n_chunks
        unclaimed = [e.name for e in weights.entries if e.name not in claimed]
        if unclaimed:
            raise ValueError(f"state_dict entries {unclaimed} belong to no layer")
        self.num_tokens = n
        # Token ranges to zero before copying: runs of consecutive layers with padding, merged, so a
        # BatchNorm module's three layers cost one zero_ instead of three (fewer parallel ops).
        self.zero_ranges: list[list[int]] = []
        for b in self.blocks:
            if b.length < b.n_chunks * self.token_size:
                if self.zero_ranges and self.zero_ranges[-1][1] == b.n0:
                    self.zero_ranges[-1][1] = b.n1
                else:
                    self.zero_ranges.append([b.n0, b.n1])
        if self.mean is not None and (len(self.mean) != len(self.blocks) or len(self.std) != len(self.blocks)):
            raise ValueError(f"standardisation statistics hold {len(self.mean)} layers, the layout has "
                             f"{len(self.blocks)}")
        self._positions = self._value_mask = None

    # -- derived constants (computed once, vectorised) --
    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def layer_names(self) -> list[str]:
        return [b.spec.weight for b in self.blocks]

    @property
    def positions(self) -> torch.Tensor:
        """[N, 3] int64: (n, l, k) for every token."""
        if self._positions is None:
            l_idx = torch.cat([torch.full((b.n1 - b.n0,), i, dtype=torch.long) for i, b in enumerate(self.blocks)])
            k_idx = torch.cat([torch.arange(b.c_out).repeat_interleave(b.n_chunks) for b in self.blocks])
            self._positions = torch.stack([torch.arange(self.num_tokens), l_idx, k_idx], dim=1)
        return self._positions

    @property
    def value_mask(self) -> torch.Tensor:
        """[N, T] bool: True where a token holds a real value, False on padding."""
        if self._value_mask is None:
            mask = torch.zeros(self.num_tokens, self.token_size, dtype=torch.bool)
            for b in self.blocks:
                mask[b.n0:b.n1].view(b.c_out, -1)[:, : b.length] = True
            self._value_mask = mask
        return self._value_mask

    @property
    def max_row_length(self) -> int:
        return max(b.length for b in self.blocks)

    @property
    def standardized(self) -> bool:
        return self.mean is not None

    @property
    def self_normalized(self) -> bool:
        """Whether tokens are standardised by each model's (or token's) own statistics, not a zoo's."""
        return self.normalization != "layer"

    def normalize_(self, tokens: torch.Tensor, min_std: float) -> torch.Tensor:
        """Standardise raw tokens [M, N, T] in place by their own statistics ("model": per model and
        layer, "token": per token, over real values only; padding stays 0), then the soft clip.
        Returns token_stats [M, N, 2] float64: (shift, scale) of every token, for `denormalize`."""
        M = tokens.shape[0]
        stats = torch.zeros(M, self.num_tokens, 2, dtype=torch.float64)
        stats[..., 1] = 1.0
        mask = self.value_mask.unsqueeze(0)
        if self.normalization == "model":
            for b in self.blocks:
                rows = tokens[:, b.n0:b.n1].reshape(M, b.c_out, -1)[:, :, : b.length].double().reshape(M, -1)
                mean, std = rows.mean(1), rows.std(1, correction=0).clamp_min(min_std)
                stats[:, b.n0:b.n1, 0], stats[:, b.n0:b.n1, 1] = mean[:, None], std[:, None]
        else:
            values = tokens[:, : self.num_tokens].double() * mask
            count = mask.sum(-1)
            mean = values.sum(-1) / count
            var = (values.square().sum(-1) / count - mean.square()).clamp_min(0)
            stats[..., 0], stats[..., 1] = mean, var.sqrt().clamp_min(min_std)
        z = (tokens[:, : self.num_tokens].double() - stats[..., :1]) / stats[..., 1:]
        if self.clip is not None:
            z = torch.asinh(z / self.clip) * self.clip
        tokens[:, : self.num_tokens] = torch.where(mask, z, torch.zeros((), dtype=z.dtype)).to(tokens.dtype)
        return stats

    def denormalize(self, tokens: torch.Tensor, token_stats: torch.Tensor) -> torch.Tensor:
        """Invert `normalize_`: standardised tokens [M, N, T] and token_stats [M, N, 2] -> raw tokens."""
        token_stats = torch.as_tensor(token_stats, dtype=torch.float64)
        if token_stats.shape != (tokens.shape[0], self.num_tokens, 2):
            raise ValueError(f"token_stats must have shape [{tokens.shape[0]}, {self.num_tokens}, 2] (shift, scale per "
                             f"token), got {list(token_stats.shape)}")
        z = tokens[:, : self.num_tokens].double()
        if self.clip is not None:
            z = torch.sinh(z / self.clip) * self.clip
        return (z * token_stats[..., 1:] + token_stats[..., :1]).float()

    def same_architecture(self, weights: WeightLayout) -> bool:
        """Same names and shapes (dtypes may differ)."""
        return [(e.name, e.shape) for e in weights.entries] == [(e.name, e.shape) for e in self.weights.entries]

    # -- the two kernels: one Python step per layer, any number of models at once --
    def encode_into(self, tokens: torch.Tensor, tensor: Callable[[WeightEntry, int], torch.Tensor],
                    standardize: bool) -> None:
        """Fill tokens [M, N, T] (contiguous) from `tensor(entry, offset) -> [M, *entry.shape]`."""
        M = tokens.shape[0]
        for n0, n1 in self.zero_ranges:
            tokens[:, n0:n1].zero_()
        for i, b in enumerate(self.blocks):
            rows = tokens[:, b.n0:b.n1].view(M, b.c_out, b.n_chunks * self.token_size)
            _weight_rows(rows[:, :, : b.rest], b).copy_(_weight_canonical(tensor(b.weight, b.weight_offset), b))
            if b.bias is not None:
                rows[:, :, b.rest].copy_(tensor(b.bias, b.bias_offset).reshape(M, b.c_out))
            if standardize:
                values = rows[:, :, : b.length].sub_(float(self.mean[i])).div_(float(self.std[i]))
                if self.clip is not None:
                    values.div_(self.clip).asinh_().mul_(self.clip)

    def encode_range_into(self, tokens: torch.Tensor, tensor: Callable[[WeightEntry, int], torch.Tensor],
                          start: int, stop: int, standardize: bool) -> None:
        """Fill tokens [M, stop - start, T] with tokens start .. stop - 1 of the sequence, exactly as
        `encode_into` would (per-layer statistics; no self-normalisation): only the layers the range
        covers are read (`tensor` is called for their entries only) and, within a layer, only the
        channels it covers are copied and standardised. The training data pipeline tokenises a
        window this way, never the whole model."""
        if not 0 <= start < stop <= self.num_tokens:
            raise ValueError(f"token range {start}..{stop} is outside the model's {self.num_tokens} tokens "
                             f"(0 <= start < stop <= {self.num_tokens})")
        M, T = tokens.shape[0], self.token_size
        for i, b in enumerate(self.blocks):
            if b.n1 <= start or b.n0 >= stop:
                continue
            first, last = max(start, b.n0) - b.n0, min(stop, b.n1) - b.n0  # tokens of this block
            # channels c0 .. c1 - 1 hold them; a ConvTranspose's canonical form spans all channels
            c0, c1 = (first // b.n_chunks, -(-last // b.n_chunks)) if b.spec.channel_dim == 0 else (0, b.c_out)
            rows = tokens.new_zeros(M, c1 - c0, b.n_chunks * T)
            weight = _weight_canonical(tensor(b.weight, b.weight_offset), b)
            _weight_rows(rows[:, :, : b.rest], b).copy_(weight[:, c0:c1] if b.spec.channel_dim == 0 else weight)
            if b.bias is not None:
                rows[:, :, b.rest].copy_(tensor(b.bias, b.bias_offset).reshape(M, b.c_out)[:, c0:c1])
            if standardize:
                values = rows[:, :, : b.length].sub_(float(self.mean[i])).div_(float(self.std[i]))
                if self.clip is not None:
                    values.div_(self.clip).asinh_().mul_(self.clip)
            skip = c0 * b.n_chunks
            tokens[:, b.n0 + first - start : b.n0 + last - start] = rows.view(M, -1, T)[:, first - skip : last - skip]

    def decode_into(self, tokens: torch.Tensor, tensor: Callable[[WeightEntry, int], torch.Tensor],
                    standardized: bool) -> None:
        """Write every entry `tensor(entry, offset) -> [M, *entry.shape]` from tokens [M, N, T].
        A negative BatchNorm running_var is raised to RUNNING_VAR_FLOOR."""
        M = tokens.shape[0]
        for i, b in enumerate(self.blocks):
            rows = tokens[:, b.n0:b.n1].reshape(M, b.c_out, b.n_chunks * self.token_size)[:, :, : b.length]
            if standardized:
                if self.clip is not None:
                    rows = torch.sinh(rows / self.clip) * self.clip
                rows = rows * float(self.std[i]) + float(self.mean[i])
            if b.bias is None and b.spec.weight.rpartition(".")[2] == "running_var":
                rows = torch.where(rows < 0, torch.full_like(rows, RUNNING_VAR_FLOOR), rows)
            _weight_canonical(tensor(b.weight, b.weight_offset), b).copy_(_weight_rows(rows[:, :, : b.rest], b))
            if b.bias is not None:
                tensor(b.bias, b.bias_offset).reshape(M, b.c_out).copy_(rows[:, :, b.rest])

    # -- serialisation --
    def to_dict(self) -> dict:
        d = {"weights": self.weights.to_dict()["entries"], "layers": [s.to_list() for s in self.layers],
             "restored": self.restored}
        if self.standardized:
            d["standardization"] = {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}
        if self.alignment is not None:
            d["alignment"] = {"reference": self.alignment["reference"].tolist(), "spec": self.alignment["spec"]}
        if self.permutation is not None:
            d["permutation"] = self.permutation
        if self.self_normalized:
            d["normalization"] = {"mode": self.normalization, "clip": self.clip}
        return d

    @classmethod
    def from_dict(cls, d: Mapping, token_size: int) -> TokenLayout:
        try:
            stats = d.get("standardization") or {}
            norm = d.get("normalization") or {}
            return cls(WeightLayout.from_dict({"entries": d["weights"]}),
                       [LayerSpec(w, b, int(c), int(g)) for w, b, c, g in d["layers"]], token_size,
                       d.get("restored", []), stats.get("mean"), stats.get("std"), d.get("alignment"),
                       d.get("permutation"), stats.get("clip", norm.get("clip")), norm.get("mode", "layer"))
        except (KeyError, TypeError) as err:
            raise ValueError(f"corrupt token layout record in the tokenizer file ({err!r}); re-save the "
                             f"tokenizer with save_pretrained") from err


def _channels(spec: LayerSpec, shape: tuple[int, ...]) -> int:
    if spec.channel_dim == 0:
        return shape[0]
    if spec.channel_dim == 1 and len(shape) >= 2:
        return shape[1] * spec.groups
    raise ValueError(f"layer {spec.weight!r}: channel_dim {spec.channel_dim} is not supported for shape {list(shape)}")


def _weight_canonical(w: torch.Tensor, b: _Block) -> torch.Tensor:
    """A weight [M, *shape] (or [M, numel]) as rows in canonical form: [M, c_out, rest], or for
    channel_dim 1 [M, groups, out/groups, in/groups, kernel]. Decoding writes through this, so for
    destinations (always our own contiguous tensors or row slices) reshape must and does return a view."""
    M = w.shape[0]
    if b.spec.channel_dim == 0:
        return w.reshape(M, b.c_out, b.rest)
    g = b.spec.groups
    shape = b.weight.shape
    return w.reshape(M, g, shape[0] // g, shape[1], -1).transpose(2, 3)


def _weight_rows(rows: torch.Tensor, b: _Block) -> torch.Tensor:
    """Token rows [M, c_out, rest] in the same canonical form as _weight_canonical."""
    if b.spec.channel_dim == 0:
        return rows
    g = b.spec.groups
    shape = b.weight.shape
    return rows.unflatten(1, (g, shape[1])).unflatten(3, (shape[0] // g, -1))


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


def _flat_rows(weights, tl: TokenLayout, layout_id: int) -> torch.Tensor:
    """Zoo rows of layout `layout_id` as [M, P] (one row [P] becomes [1, P]); another shape is refused."""
    weights = torch.as_tensor(weights)
    if weights.dim() == 1:
        weights = weights.unsqueeze(0)
    if weights.dim() != 2 or weights.shape[1] != tl.weights.num_weights:
        raise ValueError(f"expected flat weights [num_models, {tl.weights.num_weights}] for layout {layout_id}, "
                         f"got shape {list(weights.shape)}")
    return weights


class WeightTokenizer(FeatureExtractionMixin):
    """SANE weight tokenizer: models / state_dicts / .safetensors files <-> token sequences.

    Args:
        token_size: values per token, or "auto": the longest row (fan-in, +1 with a bias) of the
            first model tokenized, capped at `max_token_size` (CNN-s: 201).
        max_token_size: cap for "auto".
        allow_nonfinite: accept NaN / inf weights instead of raising.
        min_std: floor of the per-layer standardisation sigma.
        statistics: how `fit_standardization` pools the models' per-layer moments: "median" (robust:
            a few models whose weights exploded to 1000x the rest cannot set the scale) or "mean"
            (the reference code's mean of means and root mean variance).
        soft_clip: c of the soft clip c * asinh(z / c) applied to standardised values z (about
            linear for |z| < c, logarithmic beyond; decode inverts it exactly); None: no clip.
        normalization: how new layouts standardise their tokens (NORMALIZATIONS): "layer" (default:
            per-layer statistics from `fit_standardization`), "model" or "token" (each model's /
            token's own statistics, no zoo needed; see `set_normalization`).
        layouts: saved token layouts (filled by from_pretrained).

    Usage:
        tok = WeightTokenizer(token_size="auto")
        enc = tok(model)                       # BatchFeature: tokens [1, N, T], positions [1, N, 3], ...
        state_dict = tok.decode(enc)[0]        # bit-exact for float32
        enc = tok.tokenize_flat(zoo_weights)   # [M, P] zoo rows -> tokens [M, N, T]
    """

    model_input_names = ["tokens", "positions", "attention_mask"]

    def __init__(self, token_size: int | str = "auto", max_token_size: int = 288,
                 allow_nonfinite: bool = False, min_std: float = 1e-4, statistics: str = "median",
                 soft_clip: float | None = 4.0, layouts: list | None = None, normalization: str = "layer", **kwargs):
        for saved_only in ("feature_extractor_type", "format_version", "auto_map"):
            kwargs.pop(saved_only, None)
        super().__init__(**kwargs)
        if not (isinstance(max_token_size, int) and not isinstance(max_token_size, bool) and max_token_size >= 1):
            raise ValueError(f"max_token_size must be a positive integer, got {max_token_size!r}")
        self.max_token_size = max_token_size
        self.token_size = _check_token_size(token_size)
        self.allow_nonfinite = bool(allow_nonfinite)
        if not (isinstance(min_std, (int, float)) and min_std > 0):
            raise ValueError(f"min_std must be a positive number, got {min_std!r}")
        self.min_std = float(min_std)
        if statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {list(STATISTICS)}, got {statistics!r}")
        self.statistics = statistics
        if soft_clip is not None and (isinstance(soft_clip, bool) or not isinstance(soft_clip, (int, float)) or soft_clip <= 0):
            raise ValueError(f"soft_clip must be a positive number or None, got {soft_clip!r}")
        self.soft_clip = None if soft_clip is None else float(soft_clip)
        self.normalization = check_normalization(normalization)
        self.layouts: list[TokenLayout] = []
        if layouts:
            if self.token_size == "auto":
                raise ValueError("a tokenizer file with layouts must have an integer token_size, found 'auto'")
            if not isinstance(layouts, list):
                raise ValueError(f"'layouts' in the tokenizer file must be a list, got {type(layouts).__name__}")
            self.layouts = [TokenLayout.from_dict(d, self.token_size) for d in layouts]

    register_layer_handler = staticmethod(register_layer_handler)

    # -- layouts --
    def layout_of(self, model_or_state_dict) -> int:
        """Index into `self.layouts` of this model's token layout (registering it if new)."""
        return self._prepare(model_or_state_dict)[1]

    def _resolve_token_size(self, layers: list[LayerSpec], weights: WeightLayout) -> int:
        if self.token_size == "auto":
            longest = TokenLayout(weights, layers, 1).max_row_length
            self.token_size = min(longest, self.max_token_size)
        return self.token_size

    def _add_layout(self, weights: WeightLayout, layers: list[LayerSpec] | None, restored: list) -> int:
        for i, tl in enumerate(self.layouts):
            if tl.weights == weights:
                return i
        for tl in self.layouts:  # same architecture in another dtype: same plan and statistics
            if tl.same_architecture(weights):
                self.layouts.append(TokenLayout(weights, tl.layers, tl.token_size, tl.restored, tl.mean, tl.std,
                                               tl.alignment, tl.permutation, tl.clip, tl.normalization))
                return len(self.layouts) - 1
        layers = layers if layers is not None else layers_from_state_dict(weights)
        token_size = self._resolve_token_size(layers, weights)
        own = self.normalization != "layer"
        self.layouts.append(TokenLayout(weights, layers, token_size, restored, clip=self.soft_clip if own else None,
                                        normalization=self.normalization))
        return len(self.layouts) - 1

    def _prepare(self, item) -> tuple[Mapping[str, torch.Tensor], int]:
        """A model, state_dict or .safetensors path -> (state_dict, layout index)."""
        layers = None
        if isinstance(item, nn.Module):
            state_dict = item.state_dict()
            if not any(t.is_floating_point() for t in state_dict.values()):
                raise ValueError(f"the model {type(item).__name__} has no floating-point weights to tokenize (empty model?)")
            weights = WeightLayout.from_state_dict(state_dict)
            if not any(tl.weights == weights or tl.same_architecture(weights) for tl in self.layouts):
                layers = layers_from_model(item)
        elif isinstance(item, (str, os.PathLike)):
            state_dict = _load_safetensors(item)
        elif isinstance(item, Mapping):
            state_dict = item
        else:
            raise ValueError(f"cannot tokenize a {type(item).__name__}: pass an nn.Module, a state_dict, a "
                             f".safetensors path or a list of these")
        if not state_dict:
            raise ValueError("the state_dict is empty: nothing to tokenize")
        restored = []
        for name, t in state_dict.items():
            if not torch.is_tensor(t):
                raise ValueError(f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor")
            if not t.is_floating_point():
                if not name.endswith("num_batches_tracked"):
                    raise ValueError(f"state_dict entry {name!r} has dtype {t.dtype}; only floating-point "
                                     f"tensors (and BatchNorm's num_batches_tracked) can be tokenized")
                restored.append([name, list(t.shape), str(t.dtype).removeprefix("torch.")])
        weights = WeightLayout.from_state_dict(state_dict)
        return state_dict, self._add_layout(weights, layers, restored)

    # -- tokenize --
    def __call__(self, models, return_tensors: str | None = "pt", standardize: bool | None = None,
                 allow_nonfinite: bool | None = None, align: bool | None = None) -> BatchFeature:
        """Tokenize one model / state_dict / .safetensors path, or a list of them (padded batch).

        Returns a BatchFeature: tokens [B, N, T] float32, positions [B, N, 3] int64 (n, l, k; zero on
        padding), attention_mask [B, N] int64 (1 = real token), value_mask [B, N, T] bool (real values
        inside each token), layout_id [B] int64 (index into `self.layouts`), standardized [B] bool
        (whether each row's tokens are standardised; `decode` reads it). With a fitted
        standardisation the tokens are standardised per layer (standardize=False turns it off); with
        an alignment reference (`set_alignment`) each model is first aligned to it (align=False
        turns it off).
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; tokens are torch tensors ('pt')")
        items = list(models) if isinstance(models, (list, tuple)) else [models]
        if not items:
            raise ValueError("nothing to tokenize: the list of models is empty")
        prepared = [self._prepare(it) for it in items]
        prepared = [(self._aligned_state_dict(sd, i) if self._aligns(i, align) else sd, i) for sd, i in prepared]
        ids = [i for _, i in prepared]
        N = max(self.layouts[i].num_tokens for i in ids)
        T = self.token_size
        tokens = torch.empty(len(items), N, T)
        flags, stats = [], []
        for row, (state_dict, i) in enumerate(prepared):
            tl = self.layouts[i]
            std = self._standardizes(tl, standardize)
            flags.append(std)
            tl.encode_into(tokens[row:row + 1], lambda e, _o, sd=state_dict: sd[e.name].detach().unsqueeze(0),
                           std and not tl.self_normalized)
            if tl.num_tokens < N:
                tokens[row, tl.num_tokens:].zero_()
            self._check_finite(tokens[row:row + 1], allow_nonfinite,
                               lambda _m, sd=state_dict: sd, f"model {row} of the batch" if len(items) > 1 else "the model")
            stats.append(tl.normalize_(tokens[row:row + 1], self.min_std)[0] if std and tl.self_normalized else None)
        return self._encoding(tokens, ids, flags, stats)

    def tokenize_flat(self, weights: torch.Tensor, layout_id: int = 0, standardize: bool | None = None,
                      allow_nonfinite: bool | None = None, align: bool | None = None) -> BatchFeature:
        """Zoo rows [M, P] (flat weight vectors of one layout) -> BatchFeature with tokens [M, N, T]
        (plus positions, attention_mask, value_mask, layout_id as in __call__). One vectorised pass,
        after aligning each row to the alignment reference if the layout has one (align=False: the
        rows are aligned already, e.g. a training set aligned once)."""
        tl = self._layout(layout_id)
        weights = _flat_rows(weights, tl, layout_id)
        if self._aligns(layout_id, align):
            weights = self.align_flat(weights, layout_id)
        M = weights.shape[0]
        std = self._standardizes(tl, standardize)
        tokens = torch.empty(M, tl.num_tokens, tl.token_size)
        tl.encode_into(tokens, lambda e, o: weights[:, o:o + e.numel], std and not tl.self_normalized)
        self._check_finite(tokens, allow_nonfinite, lambda m: tl.weights.unflatten(weights[m].float()), "zoo row")
        stats = list(tl.normalize_(tokens, self.min_std)) if std and tl.self_normalized else None
        return self._encoding(tokens, [layout_id] * M, [std] * M, stats)

    def _standardizes(self, tl: TokenLayout, standardize: bool | None) -> bool:
        """Standardise this layout's tokens? A self-normalised layout ("model" / "token") needs no
        fitted statistics, so it does unless standardize=False."""
        if tl.self_normalized:
            return standardize is not False
        return tl.standardized if standardize is None else bool(standardize and self._require_fitted(tl))

    def set_normalization(self, normalization: str, layout_id: int | None = None) -> WeightTokenizer:
        """Standardise the tokens of layout `layout_id` (None: every layout, and new ones) by
        NORMALIZATIONS[i]: "layer" (fitted per-layer statistics), "model" or "token" (each model's /
        token's own, with this tokenizer's soft clip; for an architecture that was in no training
        zoo). The encodings of a self-normalised layout carry "token_stats" [B, N, 2]; decoding
        needs them (pass `token_stats=` for tokens that came from elsewhere, e.g. a prompt's)."""
        normalization = check_normalization(normalization)
        targets = self.layouts if layout_id is None else [self._layout(layout_id)]
        if layout_id is None:
            self.normalization = normalization
        for tl in targets:
            tl.normalization = normalization
            if normalization != "layer" and not tl.standardized:
                tl.clip = self.soft_clip
        return self

    def tokenize_range(self, weights: torch.Tensor, start: int, stop: int, layout_id: int = 0,
                       standardize: bool | None = None) -> BatchFeature:
        """Zoo rows [M, P] -> tokens start .. stop - 1 of their sequences only: BatchFeature with
        tokens [M, stop - start, T], positions [M, n, 3], attention_mask [M, n], value_mask [M, n, T]
        (a view of the layout's constant mask), layout_id, standardized; equal to
        `tokenize_flat(weights)` cut to the range, but only the layers the range covers are read
        and standardised (a window of a ResNet-18 costs a window, not a model). No alignment:
        pass aligned rows. Raises ValueError for a range outside the model's tokens or a
        self-normalised layout ("model" / "token": its statistics span whole layers; use
        tokenize_flat)."""
        tl = self._layout(layout_id)
        if tl.self_normalized:
            raise ValueError(f"tokenize_range needs per-layer statistics; layout {layout_id} is normalised by each "
                             f"model's own ({tl.normalization!r}): use tokenize_flat and cut the range")
        weights = _flat_rows(weights, tl, layout_id)
        start, stop = int(start), int(stop)
        M, n = weights.shape[0], max(stop - start, 0)
        std = self._standardizes(tl, standardize)
        tokens = torch.empty(M, n, tl.token_size)
        tl.encode_range_into(tokens, lambda e, o: weights[:, o:o + e.numel], start, stop, std)
        return BatchFeature({"tokens": tokens, "positions": tl.positions[start:stop].unsqueeze(0).expand(M, n, 3).clone(),
                             "attention_mask": torch.ones(M, n, dtype=torch.long),
                             "value_mask": tl.value_mask[start:stop].unsqueeze(0).expand(M, n, tl.token_size),
                             "layout_id": torch.full((M,), int(layout_id), dtype=torch.long),
                             "standardized": torch.full((M,), std, dtype=torch.bool)})

    def _encoding(self, tokens: torch.Tensor, ids: list[int], standardized: list[bool],
                  stats: list | None = None) -> BatchFeature:
        B, N, T = tokens.shape
        if len(set(ids)) == 1 and self.layouts[ids[0]].num_tokens == N:
            tl = self.layouts[ids[0]]
            positions = tl.positions.unsqueeze(0).expand(B, N, 3).clone()
            attention_mask = torch.ones(B, N, dtype=torch.long)
            # a read-only view of the layout's constant mask: no copy of [N, T] per model
            value_mask = tl.value_mask.unsqueeze(0).expand(B, N, T)
        else:
            positions = torch.zeros(B, N, 3, dtype=torch.long)
            attention_mask = torch.zeros(B, N, dtype=torch.long)
            value_mask = torch.zeros(B, N, T, dtype=torch.bool)
            for row, i in enumerate(ids):
                tl = self.layouts[i]
                positions[row, : tl.num_tokens] = tl.positions
                attention_mask[row, : tl.num_tokens] = 1
                value_mask[row, : tl.num_tokens] = tl.value_mask
        out = {"tokens": tokens, "positions": positions, "attention_mask": attention_mask,
               "value_mask": value_mask, "layout_id": torch.tensor(ids, dtype=torch.long),
               "standardized": torch.tensor(standardized, dtype=torch.bool)}
        if stats is not None and any(s is not None for s in stats):
            # (shift, scale) per token of self-normalised rows; identity (0, 1) elsewhere and on padding
            token_stats = torch.zeros(B, N, 2, dtype=torch.float64)
            token_stats[..., 1] = 1.0
            for row, s in enumerate(stats):
                if s is not None:
                    token_stats[row, : len(s)] = s
            out["token_stats"] = token_stats
        return BatchFeature(out)

    def _check_finite(self, tokens: torch.Tensor, allow: bool | None, state_dict_of, what: str) -> None:
        """One cheap sum per model; only a non-finite sum triggers the per-tensor search for a name."""
        if (self.allow_nonfinite if allow is None else allow):
            return
        sums = tokens.reshape(tokens.shape[0], -1).sum(1)
        for m in torch.nonzero(~torch.isfinite(sums)).flatten().tolist():
            for name, t in state_dict_of(m).items():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    where = f"{what} {m}" if what == "zoo row" else what
                    raise ValueError(f"{where}: weight tensor {name!r} holds NaN or inf values; fix the weights "
                                     f"or pass allow_nonfinite=True")

    # -- decode --
    def decode(self, encoding, standardized: bool | None = None, token_stats=None) -> list[dict[str, torch.Tensor]]:
        """A BatchFeature / dict from __call__ (or tokens [B, N, T] of layout 0) -> list of state_dicts.

        Each entry comes back in its original dtype (float32 bit-exact; float16 / bfloat16 exact,
        since float32 tokens hold them exactly; float64 rounded to float32 precision), with
        num_batches_tracked restored as 0, so `model.load_state_dict(sd)` works strictly.
        Standardised tokens are un-standardised (to float32 rounding; see fit_standardization):
        which rows are is read from the encoding's `standardized` entry, so tokens made with
        standardize=False come back unchanged. `standardized` overrides it; bare tokens without
        the entry (e.g. a model's reconstruction) count as standardised when the layout is fitted.
        A negative BatchNorm running_var (a generated model) is raised to RUNNING_VAR_FLOOR.
        Rows of a self-normalised layout ("model" / "token") are un-standardised with `token_stats`
        [B, N, 2] (default: the encoding's own).
        """
        tokens, ids, lengths, positions, flags = self._unpack(encoding)
        if token_stats is None and isinstance(encoding, Mapping):
            token_stats = encoding.get("token_stats")
        out = []
        for row in range(tokens.shape[0]):
            tl = self._layout(ids[row])
            self._check_match(tl, tokens[row], lengths[row], None if positions is None else positions[row])
            std = self._decodes_standardized(tl, standardized, None if flags is None else flags[row])
            sd = {e.name: torch.empty(e.shape, dtype=getattr(torch, e.dtype)) for e in tl.weights.entries}
            raw, std = self._raw_tokens(tl, tokens[row:row + 1, : tl.num_tokens], std, token_stats, slice(row, row + 1))
            tl.decode_into(raw, lambda e, _o, sd=sd: sd[e.name].unsqueeze(0), std)
            for name, shape, dtype in tl.restored:
                sd[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
            out.append(sd)
        return out

    def decode_flat(self, tokens, layout_id: int = 0, standardized: bool | None = None, token_stats=None) -> torch.Tensor:
        """Tokens [M, N, T] of one layout (or a BatchFeature) -> flat float32 weights [M, P]; whether
        to un-standardise as in `decode` (the encoding's `standardized` entry, else `standardized`,
        else the layout's fitted state; `token_stats` [M, N, 2] for a self-normalised layout)."""
        flags = None
        if isinstance(tokens, Mapping):
            token_stats = tokens.get("token_stats") if token_stats is None else token_stats
            layout_id = int(tokens["layout_id"][0]) if "layout_id" in tokens else layout_id
            flags = [bool(f) for f in torch.as_tensor(tokens["standardized"]).reshape(-1)] if "standardized" in tokens else None
            tokens = tokens["tokens"]
        tl = self._layout(layout_id)
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(0)
        self._check_match(tl, tokens[0], tokens.shape[1], None)
        flat = torch.empty(tokens.shape[0], tl.weights.num_weights)
        rows = [self._decodes_standardized(tl, standardized, None if flags is None else flags[m]) for m in range(len(tokens))]
        for std in set(rows):  # rows made with and without standardisation decode apart
            index = torch.tensor([m for m, r in enumerate(rows) if r == std])
            part = torch.empty(len(index), tl.weights.num_weights)
            raw, std = self._raw_tokens(tl, tokens[index].float(), std, token_stats, index)
            tl.decode_into(raw, lambda e, o, part=part: part[:, o:o + e.numel], std)
            flat[index] = part
        return flat

    @staticmethod
    def _raw_tokens(tl: TokenLayout, tokens: torch.Tensor, std: bool, token_stats, rows) -> tuple[torch.Tensor, bool]:
        """(tokens, standardized) for decode_into: a self-normalised layout's standardised rows
        un-standardised with their token_stats (decode_into then reads them as raw)."""
        if not (std and tl.self_normalized):
            return tokens, std
        if token_stats is None:
            raise ValueError(
                f"these tokens are standardised per {tl.normalization} (normalization={tl.normalization!r}), so "
                "decoding needs each row's statistics: pass token_stats= (the 'token_stats' of the encoding the "
                "latents came from, e.g. of the prompt model a sample was drawn around)")
        return tl.denormalize(tokens[:, : tl.num_tokens], torch.as_tensor(token_stats)[rows, : tl.num_tokens]), False

    def _decodes_standardized(self, tl: TokenLayout, given: bool | None, carried: bool | None) -> bool:
        """Un-standardise a row? The argument if given, else what its encoding says, else the layout's state."""
        if tl.self_normalized:
            return bool(carried if given is None and carried is not None else given is not False)
        if given is not None:
            return bool(given and self._require_fitted(tl))
        if carried is not None:
            return bool(carried and self._require_fitted(tl))
        return tl.standardized

    def _unpack(self, encoding):
        if isinstance(encoding, Mapping):
            if "tokens" not in encoding:
                raise ValueError("the encoding has no 'tokens'; pass what the tokenizer returned")
            tokens = torch.as_tensor(encoding["tokens"])
            positions = encoding.get("positions")
            ids = encoding.get("layout_id")
            mask = encoding.get("attention_mask")
            flags = encoding.get("standardized")
        else:
            tokens, positions, ids, mask, flags = torch.as_tensor(encoding), None, None, None, None
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(0)
            positions = None if positions is None else torch.as_tensor(positions).unsqueeze(0)
            mask = None if mask is None else torch.as_tensor(mask).unsqueeze(0)
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be [batch, n_tokens, token_size], got shape {list(tokens.shape)}")
        B = tokens.shape[0]
        ids = [0] * B if ids is None else [int(i) for i in torch.as_tensor(ids).reshape(-1)]
        if len(ids) != B:
            raise ValueError(f"layout_id has {len(ids)} entries for a batch of {B}")
        lengths = [tokens.shape[1]] * B if mask is None else [int(x) for x in torch.as_tensor(mask).sum(-1)]
        if flags is not None:
            flags = [bool(f) for f in torch.as_tensor(flags).reshape(-1)]
            if len(flags) != B:
                raise ValueError(f"standardized has {len(flags)} entries for a batch of {B}")
        return tokens.float(), ids, lengths, None if positions is None else torch.as_tensor(positions), flags

    def _check_match(self, tl: TokenLayout, tokens: torch.Tensor, length: int, positions) -> None:
        """Tokens [N', T'] of one model against its layout; the error names the first layer that differs."""
        if tokens.shape[-1] != tl.token_size:
            raise ValueError(f"tokens have token_size {tokens.shape[-1]}, this tokenizer's layout uses "
                             f"{tl.token_size}")
        if positions is not None:
            found = positions[:length, 1:]
            expected = tl.positions[: min(length, tl.num_tokens), 1:]
            n = min(len(found), len(expected))
            bad = torch.nonzero((found[:n] != expected[:n]).any(-1)).flatten()
            first = int(bad[0]) if len(bad) else (n if length != tl.num_tokens else None)
            if first is not None:
                b = self._block_at(tl, min(first, tl.num_tokens - 1))
                l_found = int(found[min(first, len(found) - 1), 0]) if len(found) else -1
                n_found = int((found[:, 0] == l_found).sum()) if len(found) else 0
                raise ValueError(
                    f"the tokens do not match the layout from token {first} on: layer {b.spec.weight!r} "
                    f"expects tokens of shape [{b.n1 - b.n0}, {tl.token_size}] (layer index "
                    f"{tl.blocks.index(b)}), found [{n_found}, {tokens.shape[-1]}] with layer index {l_found}; "
                    f"the sequence has {length} tokens, the layout {tl.num_tokens}")
        elif length != tl.num_tokens:
            b = self._block_at(tl, min(length, tl.num_tokens - 1))
            found = max(0, min(length, b.n1) - b.n0)
            raise ValueError(
                f"the tokens do not match the layout: layer {b.spec.weight!r} expects tokens of shape "
                f"[{b.n1 - b.n0}, {tl.token_size}] at {b.n0}..{b.n1 - 1}, found [{found}, {tokens.shape[-1]}]; "
                f"the sequence has {length} tokens, the layout {tl.num_tokens}")

    @staticmethod
    def _block_at(tl: TokenLayout, n: int) -> _Block:
        return next(b for b in tl.blocks if b.n0 <= n < b.n1)

    def _layout(self, layout_id: int) -> TokenLayout:
        if not self.layouts:
            raise ValueError("the tokenizer has seen no model yet: tokenize one model (or load a saved "
                             "tokenizer) so it knows the layout")
        if not 0 <= int(layout_id) < len(self.layouts):
            raise ValueError(f"layout_id {layout_id} is out of range; the tokenizer knows {len(self.layouts)} layouts")
        return self.layouts[int(layout_id)]

    # -- alignment --
    def set_alignment(self, reference: torch.Tensor, spec, layout_id: int = 0) -> WeightTokenizer:
        """Align every model of this layout to `reference` (flat weights [P]) before tokenizing it,
        by weight matching along the permutations of `spec` (a weightspace.PermutationSpec). The
        function of a model is unchanged; permutation-equivalent models get the same tokens. Stored
        with the tokenizer, so embedding and sampling align new models as the training set was."""
        tl = self._layout(layout_id)
        reference = torch.as_tensor(reference, dtype=torch.float32).reshape(-1)
        if reference.numel() != tl.weights.num_weights:
            raise ValueError(f"the alignment reference has {reference.numel()} weights, layout {layout_id} has "
                             f"{tl.weights.num_weights}")
        self.set_permutation_spec(spec, layout_id)
        for other in self.layouts:
            if other.same_architecture(tl.weights):
                other.alignment = {"reference": reference.clone(), "spec": spec.to_dict()}
        return self

    # -- permutation symmetry --
    def set_permutation_spec(self, spec, layout_id: int = 0) -> WeightTokenizer:
        """Store the architecture's neuron permutation groups (a weightspace.PermutationSpec) with the
        layout, so embeddings can be averaged over function-preserving permutations of a model
        (`permutations=` of the embedding and probe APIs). The trainer stores it for every zoo."""
        tl = self._layout(layout_id)
        spec.check(tl.weights)
        for other in self.layouts:
            if other.same_architecture(tl.weights):
                other.permutation = spec.to_dict()
        return self

    def permutation_spec(self, layout_id: int = 0):
        """The PermutationSpec stored with `set_permutation_spec` for this layout."""
        from .weightspace.permutation import PermutationSpec

        tl = self._layout(layout_id)
        if tl.permutation is None:
            raise ValueError(
                f"this tokenizer stores no permutation spec for layout {layout_id} (checkpoints of hyperrep_hf "
                "0.1.0 lack it); use permutations=0, or call tokenizer.set_permutation_spec(permutation_spec(model), "
                f"{layout_id}) with a model of the zoo's architecture and save the tokenizer again"
            )
        return PermutationSpec.from_dict(tl.permutation)

    def align_flat(self, weights: torch.Tensor, layout_id: int = 0) -> torch.Tensor:
        """Flat weights [M, P] -> the same models aligned to the layout's reference [M, P]."""
        from .weightspace.permutation import PermutationSpec

        try:
            from .weightspace.alignment import align
        except ImportError as err:  # remote code: weight matching needs scipy and the package
            raise ImportError("aligning models needs hyperrep_hf installed (pip install hyperrep_hf)") from err

        tl = self._layout(layout_id)
        if tl.alignment is None:
            raise ValueError("this layout has no alignment reference; call set_alignment first")
        spec = PermutationSpec.from_dict(tl.alignment["spec"])
        reference = tl.alignment["reference"]
        return torch.stack([align(w.float(), reference, spec, layout=tl.weights)[0] for w in weights])

    def _aligns(self, layout_id: int, align: bool | None) -> bool:
        has_reference = self.layouts[layout_id].alignment is not None
        if align and not has_reference:
            raise ValueError("align=True but this layout has no alignment reference; call set_alignment first")
        return has_reference and align is not False

    def _aligned_state_dict(self, state_dict: Mapping[str, torch.Tensor], layout_id: int) -> dict[str, torch.Tensor]:
        weights = self.layouts[layout_id].weights
        aligned = weights.unflatten(self.align_flat(weights.flatten(state_dict).unsqueeze(0), layout_id)[0])
        return {**state_dict, **aligned}

    # -- standardisation --
    def fit_standardization(self, models, layout_id: int | None = None) -> WeightTokenizer:
        """Fit per-layer statistics on the TRAIN split only.

        `models`: a list of models / state_dicts, or flat weights [M, P] of `layout_id` (default 0).
        For each layer l (weight and bias together; BatchNorm's affine pair, running_mean and
        running_var are three layers): mu_l = median over models of the per-model mean, sigma_l =
        sqrt(median over models of the per-model variance) (`statistics="mean"`: means, as
        published), floored at `min_std`. Tokenize then applies z = (w - mu_l) / sigma_l to real
        values (padding stays 0) and the soft clip c * asinh(z / c); decode inverts both, which
        returns the weights to within float32 rounding (about 1e-7 relative for |z| < c), not
        bit-exactly.
        Layouts of the same architecture in another dtype share the statistics.
        """
        if torch.is_tensor(models):
            groups = {0 if layout_id is None else layout_id: torch.as_tensor(models).reshape(len(models), -1).float()}
        else:
            items = list(models)
            if not items:
                raise ValueError("fit_standardization needs at least one model")
            by_layout: dict[int, list] = {}
            for it in items:
                sd, i = self._prepare(it)
                by_layout.setdefault(i, []).append(self.layouts[i].weights.flatten(sd))
            groups = {i: torch.stack(rows) for i, rows in by_layout.items()}
        for i, flat in groups.items():
            tl = self._layout(i)
            if flat.shape[1] != tl.weights.num_weights:
                raise ValueError(f"flat weights have {flat.shape[1]} values, layout {i} has {tl.weights.num_weights}")
            self.fit_standardization_from_moments(*self.layer_moments(flat, i), layout_id=i)
        return self

    def layer_moments(self, weights: torch.Tensor, layout_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat weights [M, P] -> (mean, variance) [M, num_layers] float64: each model's moments of
        each layer's values (weight and bias together), what `fit_standardization` pools. Computed
        per row, so the moments of a zoo read in chunks and concatenated equal those of the whole."""
        tl = self._layout(layout_id)
        flat = torch.as_tensor(weights)
        if flat.dim() != 2 or flat.shape[1] != tl.weights.num_weights:
            raise ValueError(f"flat weights have shape {list(flat.shape)}; layout {layout_id} has "
                             f"{tl.weights.num_weights} weights per model")
        if not torch.isfinite(flat).all():
            raise ValueError("fit_standardization got NaN or inf weights; clean the training zoo first")
        mean, var = [], []
        for b in tl.blocks:
            parts = [flat[:, b.weight_offset:b.weight_offset + b.weight.numel]]
            if b.bias is not None:
                parts.append(flat[:, b.bias_offset:b.bias_offset + b.bias.numel])
            vals = torch.cat(parts, dim=1).double()
            mean.append(vals.mean(1))
            var.append(vals.var(1, correction=0))
        return torch.stack(mean, 1), torch.stack(var, 1)

    def fit_standardization_from_moments(self, mean: torch.Tensor, var: torch.Tensor, layout_id: int = 0) -> WeightTokenizer:
        """Fit the standardisation from per-model layer moments [M, num_layers] (`layer_moments` of
        the train rows, e.g. read chunk by chunk from a zoo larger than memory), pooled as
        `fit_standardization` pools them."""
        tl = self._layout(layout_id)
        if mean.dim() != 2 or mean.shape != var.shape or mean.shape[1] != tl.num_layers or len(mean) == 0:
            raise ValueError(f"moments must be two [num_models >= 1, {tl.num_layers}] tensors, got {list(mean.shape)} "
                             f"and {list(var.shape)}")
        pool = torch.mean if self.statistics == "mean" else torch.median
        means = [pool(mean[:, i].contiguous()).item() for i in range(tl.num_layers)]
        stds = [max(pool(var[:, i].contiguous()).sqrt().item(), self.min_std) for i in range(tl.num_layers)]
        for other in self.layouts:
            if other.same_architecture(tl.weights):
                other.mean, other.std = torch.tensor(means, dtype=torch.float64), torch.tensor(stds, dtype=torch.float64)
                other.clip = self.soft_clip
        return self

    def layer_std(self, layout_id: int = 0) -> torch.Tensor:
        """The fitted per-layer sigma [num_layers] float32, indexed by the position's l (for
        layer-wise loss normalisation: positions[..., 1] picks each token's sigma)."""
        tl = self._layout(layout_id)
        self._require_fitted(tl)
        return tl.std.float()

    def _require_fitted(self, tl: TokenLayout) -> bool:
        if not tl.standardized:
            raise ValueError("no standardisation is fitted for this layout; call fit_standardization on the "
                             "training models first")
        return True

    # -- save / load --
    def to_dict(self) -> dict:
        # auto_map: AutoFeatureExtractor(..., trust_remote_code=True) finds this class in the
        # checkpoint's copy of this file (remote_code.py writes it) where hyperrep_hf is not installed.
        return {"feature_extractor_type": type(self).__name__, "format_version": FORMAT_VERSION,
                "auto_map": {"AutoFeatureExtractor": f"tokenization_weights.{type(self).__name__}"},
                "token_size": self.token_size, "max_token_size": self.max_token_size,
                "allow_nonfinite": self.allow_nonfinite, "min_std": self.min_std,
                "statistics": self.statistics, "soft_clip": self.soft_clip, "normalization": self.normalization,
                "layouts": [tl.to_dict() for tl in self.layouts]}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def to_json_file(self, json_file_path) -> None:
        atomic_write_text(json_file_path, self.to_json_string())

    @classmethod
    def from_dict(cls, feature_extractor_dict: dict, **kwargs):
        if not isinstance(feature_extractor_dict, dict):
            raise ValueError("the tokenizer file does not hold a JSON object")
        version = feature_extractor_dict.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"tokenizer file format_version {version} is not supported (this library reads "
                             f"{FORMAT_VERSION}); upgrade hyperrep_hf")
        return super().from_dict(dict(feature_extractor_dict), **kwargs)

    def __repr__(self) -> str:
        return (f"WeightTokenizer(token_size={self.token_size}, layouts={len(self.layouts)}, "
                f"standardized={[tl.standardized for tl in self.layouts]})")


def check_normalization(normalization) -> str:
    """One of NORMALIZATIONS; a clear error otherwise."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    return normalization


def _check_token_size(token_size) -> int | str:
    if token_size == "auto":
        return token_size
    if isinstance(token_size, bool) or not isinstance(token_size, int) or token_size < 1:
        raise ValueError(f"token_size must be a positive integer or 'auto', got {token_size!r}")
    return token_size


def _load_safetensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path} is not a .safetensors file; load it yourself and pass the state_dict")
    from safetensors.torch import load_file

    return load_file(str(path))

