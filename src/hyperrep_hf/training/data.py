"""The training data pipeline: zoo rows -> standardised tokens -> two augmented views -> batches.

    data = ZooData.from_zoos(["zoos/mnist-seed"], token_size="auto", epochs=None)
    views = data.training_batch(rows, window_size=64, generator=g, augmentation=Augmentation())
    model(**views.model_inputs(), num_views=2)

Memory is bounded by a batch, never by the zoo: a split larger than IN_MEMORY_SPLIT_BYTES is read
lazily from the zoo's parquet shards (`Zoo.rows`; only the rows of a batch, in chunks of at most
GATHER_LIMIT weights; a smaller one is held as one tensor), and
only the tokens of a view's window are made: the window starts are drawn first, then each view
permutes just the layers its window covers (one gather per permuted axis) and tokenises just that
token range (`TokenLayout.encode_range_into`). Rows sharing a window start (all of them when a
model is shorter than the window) go through it together, one Python step per layer. The batches
equal those of tokenising whole permuted models and cutting the window (same random draws).
The standardisation and the LWLN statistics are computed streaming over the train rows.

Several zoos may be combined if they share one token size; each zoo (architecture) is a "group"
with its own token layout, and batches mixing groups are padded to the longest window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..tokenization_weights import TokenLayout, WeightTokenizer
from ..weightspace import (
    PermutationSpec,
    additive_noise,
    block_erasing,
    multiplicative_noise,
    permutation_spec,
)
from ..windows import random_window_starts
from ..zoo import Zoo, build_model, load_zoo
from ..zoo.dataset import ZooRows

REQUIRED_COLUMNS = ("weights", "model_id", "epoch")
SPLITS = ("train", "validation", "test")
# A split whose usable rows hold at most this many bytes of weights is read once into one tensor
# [rows, P] (every zoo of the demo and the presets: batches then index memory); a larger one stays
# on disk as a ZooRows and each batch reads its own rows.
IN_MEMORY_SPLIT_BYTES = 256 << 20
# Weights read, permuted and tokenised at once (one row at least): a batch of ResNet-18s (11M
# weights, 45 MB a row) goes a row at a time, a batch of small models in one step.
GATHER_LIMIT = 1 << 24


@dataclass
class Augmentation:
    """How the two contrastive views of a model differ (METHOD.md §5).

    views: "permuted-both" (each view its own random function-preserving permutation),
    "stored-and-permuted" (view 1 the model as stored, view 2 a random permutation of it: SANE's
    aligned + permuted views on an aligned zoo) or "stored-both" (the stored model twice, the views
    differing only by noise and erasing)."""

    views: str = "permuted-both"
    multiplicative_noise: float = 0.1
    additive_noise: float = 0.0
    erase_probability: float = 0.0

    def __post_init__(self):
        from .arguments import VIEWS

        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {list(VIEWS)}, got {self.views!r}")

    def permutes(self, view: int) -> bool:
        """Whether view 0 / 1 is a random permutation of the stored model."""
        return self.views == "permuted-both" or (self.views == "stored-and-permuted" and view == 1)


@dataclass
class Split:
    """The rows of one split of one zoo: weights [M, P] float32 (a ZooRows read lazily from the
    zoo, or a tensor: aligned rows) and their metadata (a DataFrame); `exploded`: how many
    exploded checkpoints were left out (see `exploded_rows`). `weights[indices]` reads those rows."""

    weights: ZooRows | torch.Tensor
    metadata: object
    exploded: int = 0

    def __len__(self) -> int:
        return len(self.weights)


@dataclass
class ZooGroup:
    """One zoo (one architecture) of the training data: its token layout and permutation spec."""

    name: str
    zoo: Zoo
    layout_id: int
    spec: PermutationSpec | None
    splits: dict[str, Split]
    token_layout: TokenLayout

    @property
    def num_tokens(self) -> int:
        return self.token_layout.num_tokens


@dataclass
class TokenBatch:
    """A padded batch of token windows. tokens/targets [B, W, T] float32, positions [B, W, 3] int64,
    attention_mask [B, W] int64, value_mask [B, W, T] bool. With two views, rows i and i + B/2 are
    the two views of one model."""

    tokens: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    attention_mask: torch.Tensor
    value_mask: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens, "positions": self.positions, "attention_mask": self.attention_mask,
                "targets": self.targets, "value_mask": self.value_mask}

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(t.to(device, non_blocking=True) for t in
                            (self.tokens, self.targets, self.positions, self.attention_mask, self.value_mask)))

    @property
    def num_tokens(self) -> int:
        """Real tokens in the batch (all views)."""
        return int(self.attention_mask.sum())


class ZooData:
    """Train/validation/test rows of one or more zoos with a tokenizer fitted on the train rows.

    Rows are addressed globally: row r of split s is (group, local index) via `locate`.
    """

    def __init__(self, groups: list[ZooGroup], tokenizer: WeightTokenizer, epochs: list[int] | None):
        self.groups, self.tokenizer, self.epochs = groups, tokenizer, epochs
        self._offsets = {s: np.cumsum([0] + [len(g.splits[s]) for g in groups]) for s in SPLITS}
        self._checked: set = set()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_zoos(cls, zoos: Sequence[str | Zoo], token_size: int | str = "auto", epochs: list[int] | None = None,
                  standardize: bool = True, need_permutations: bool = True, properties: Sequence[str] = (),
                  align: bool = False, statistics: str = "median", soft_clip: float | None = 4.0,
                  drop_exploded: bool = True) -> ZooData:
        """Load zoos, keep the rows of `epochs` (None = all), check columns, fit the tokenizer's
        standardisation (`statistics`, `soft_clip`: see WeightTokenizer) on the train rows only.
        Non-finite checkpoints are left out of every split; with `drop_exploded`, exploded ones
        (see `exploded_rows`) are left out of the train split, whose statistics they would set;
        validation and test keep them. Raises ValueError for empty zoos, missing columns,
        architectures without a common token size, or architectures without a permutation spec
        when `need_permutations` or `align`. With `align`, every model is aligned to one reference
        (see `align_splits`) and the tokenizer keeps the reference for new models."""
        loaded = [(str(z.path) if isinstance(z, Zoo) else str(z), z if isinstance(z, Zoo) else load_zoo(z)) for z in zoos]
        if not loaded:
            raise ValueError("no zoo given: pass at least one zoo folder or Hub dataset id")
        token_size = _common_token_size(loaded, token_size)
        tokenizer = WeightTokenizer(token_size=token_size, max_token_size=max(288, token_size), statistics=statistics,
                                    soft_clip=soft_clip)
        groups = []
        for name, zoo in loaded:
            _check_columns(name, zoo, properties)
            model = build_model(zoo.architecture, **zoo.architecture_kwargs)
            layout_id = tokenizer.layout_of(model)
            tl = tokenizer.layouts[layout_id]
            if [(e.name, e.shape) for e in tl.weights.entries] != [(e.name, e.shape) for e in zoo.layout.entries]:
                raise ValueError(f"zoo {name}: its weight layout does not match architecture {zoo.architecture!r}")
            # The spec travels with the tokenizer (permutation-averaged embeddings) whenever the
            # architecture has one; only augmentation and alignment cannot do without it.
            try:
                spec = permutation_spec(model)
                tokenizer.set_permutation_spec(spec, layout_id)
            except ValueError as err:
                if need_permutations or align:
                    raise ValueError(f"zoo {name} ({zoo.architecture}): no permutation augmentation possible ({err}); "
                                     "train with --views stored-both") from err
                spec = None
            splits = {s: _read_split(zoo, s, epochs, drop_exploded and s == "train") for s in SPLITS}
            if align and len(splits["train"]):
                align_splits(splits, tokenizer, layout_id, spec)
            groups.append(ZooGroup(name, zoo, layout_id, spec, splits, tl))
        if sum(len(g.splits["train"]) for g in groups) == 0:
            which = "" if epochs is None else f" at zoo epochs {_short(epochs)}"
            raise ValueError(f"the zoo has no training rows{which} ({', '.join(n for n, _ in loaded)}); "
                             "build a zoo with models in its train split or choose other --zoo_epochs")
        if standardize:
            for g in groups:
                if len(g.splits["train"]) == 0:
                    raise ValueError(f"zoo {g.name} has no training rows to fit the standardisation on")
            # zoos of one architecture share a layout: its statistics come from all their train rows
            for layout_id in dict.fromkeys(g.layout_id for g in groups):
                moments = [tokenizer.layer_moments(chunk, layout_id) for g in groups if g.layout_id == layout_id
                           for chunk in _chunks(g.splits["train"].weights)]
                tokenizer.fit_standardization_from_moments(torch.cat([m[0] for m in moments]),
                                                           torch.cat([m[1] for m in moments]), layout_id)
        return cls(groups, tokenizer, epochs)

    # -- sizes and lookup -----------------------------------------------------------------------
    def num_rows(self, split: str) -> int:
        return int(self._offsets[split][-1])

    def num_exploded(self, split: str = "train") -> int:
        """Exploded checkpoints of the split left out of the rows (see `exploded_rows`)."""
        return sum(g.splits[split].exploded for g in self.groups)

    @property
    def max_tokens(self) -> int:
        return max(g.num_tokens for g in self.groups)

    @property
    def num_layers(self) -> int:
        return max(self.tokenizer.layouts[g.layout_id].num_layers for g in self.groups)

    @property
    def max_channels(self) -> int:
        return max(int(self.tokenizer.layouts[g.layout_id].positions[:, 2].max()) + 1 for g in self.groups)

    def locate(self, split: str, rows: torch.Tensor) -> list[tuple[ZooGroup, torch.Tensor]]:
        """Global row indices [B] -> [(group, local indices)] for the groups present, in group order
        (a batch comes out sorted by group; both views of a model share its place)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        offsets = self._offsets[split]
        out = []
        for i, g in enumerate(self.groups):
            sel = (rows >= offsets[i]) & (rows < offsets[i + 1])
            if sel.any():
                out.append((g, rows[sel] - int(offsets[i])))
        return out

    def metadata(self, split: str, column: str) -> list:
        """One column of the split's metadata, all groups concatenated (global row order)."""
        values = []
        for g in self.groups:
            md = g.splits[split].metadata
            values += md[column].tolist() if column in md else [float("nan")] * len(md)
        return values

    # -- batches --------------------------------------------------------------------------------
    def training_batch(self, rows: torch.Tensor, window_size: int, generator: torch.Generator,
                       augmentation: Augmentation) -> TokenBatch:
        """Two views of every train row (global indices [B]) -> TokenBatch of 2B rows.

        Per view: a random function-preserving permutation of the flat weights (as
        `augmentation.views` says), tokenisation (targets), then noise / erasing (inputs). Both
        views get the SAME random window (a model shorter than the window fills what it has; the
        rest is padding). Only the rows of the batch are read and only the window's layers are
        permuted and tokenised (module docstring); the random draws are those of permuting and
        tokenising whole models, so the batch is the same.
        """
        located = self.locate("train", rows)
        # the draws in their fixed order: permutations (group by group, view 1 then 2), window starts
        perms = [[g.spec.random(len(local), generator) if augmentation.permutes(v) and g.spec is not None else None
                  for v in range(2)] for g, local in located]
        lengths = torch.cat([torch.full((len(local),), g.num_tokens, dtype=torch.long) for g, local in located])
        window = min(int(window_size), int(lengths.max()))
        starts = random_window_starts(lengths, window, generator)
        B, T = len(lengths), self.tokenizer.token_size
        self._check_batch_fits(B, window)
        targets = torch.zeros(2, B, window, T)
        positions = torch.zeros(2, B, window, 3, dtype=torch.long)
        attention_mask = torch.zeros(2, B, window, dtype=torch.long)
        value_mask = torch.zeros(2, B, window, T, dtype=torch.bool)
        offset = 0
        for (g, local), view_perms in zip(located, perms):
            tl = self.tokenizer.layouts[g.layout_id]
            group_starts = starts[offset:offset + len(local)]
            for start in torch.unique(group_starts).tolist():
                stop = min(start + window, tl.num_tokens)
                n = stop - start
                same = torch.nonzero(group_starts == start).flatten()
                for part in torch.split(same, _rows_per_read(tl.weights.num_weights)):
                    flat = g.splits["train"].weights[local[part]]
                    out = offset + part
                    for v, p in enumerate(view_perms):
                        picked = None if p is None else {k: q[part] for k, q in p.items()}
                        targets[v, out, :n] = _window_tokens(tl, flat, start, stop, g, picked, self.tokenizer.min_std)
                    positions[:, out, :n] = tl.positions[start:stop]
                    attention_mask[:, out, :n] = 1
                    value_mask[:, out, :n] = tl.value_mask[start:stop]
            offset += len(local)
        targets, value_mask = targets.reshape(2 * B, window, T), value_mask.reshape(2 * B, window, T)
        inputs = _augment(targets, value_mask, augmentation, generator)
        return TokenBatch(inputs, targets, positions.reshape(2 * B, window, 3), attention_mask.reshape(2 * B, window),
                          value_mask)

    def _check_batch_fits(self, batch_size: int, window: int) -> None:
        """Refuse, once per batch shape, a batch whose tensors cannot fit in the memory available."""
        key = (batch_size, window)
        if key in self._checked:
            return
        T = self.tokenizer.token_size
        # targets, inputs, noise (float32), value mask (bool), positions and attention mask (int64), both views
        need = 2 * batch_size * window * (T * (4 + 4 + 4 + 1) + 4 * 8)
        need += 4 * GATHER_LIMIT + max(4 * self.tokenizer.layouts[g.layout_id].weights.num_weights for g in self.groups)
        available = _available_memory()
        if available is not None and need > available:
            raise ValueError(f"a training batch of {batch_size} models x 2 views x window {window} x token size {T} "
                             f"needs about {need / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of memory "
                             f"available; lower --batch_size or --window_size")
        self._checked.add(key)

    def token_statistics(self, kind: str = "standardized") -> torch.Tensor:
        """sigma_l [num_layers] of layer-wise loss normalisation (LWLN, METHOD.md §4), in the units of
        the tokens the loss compares: the reconstruction error of layer l is divided by it.

        "standardized": the std of the real values of layer l's training tokens. On tokens that are
            already standardised per layer this is close to 1 for every layer (exactly
            std(w_l) / s_l, with s_l the standardisation scale, below that where the soft clip
            compresses outliers), so LWLN then hardly reweights the layers: the standardisation
            has equalised them already. On raw tokens (standardize=False) it is the published LWLN.
        "raw": as published, whatever the tokens: the error of layer l in raw-weight units divided
            by sigma_raw_l, the std of all raw training weights of layer l. A token value is
            (w - mu_l) / s_l (before the clip), so in token units this is sigma_raw_l / s_l (s_l = 1
            without standardisation). It equals "standardized" unless a soft clip is on.

        Layers are pooled over the zoos by their index l; with several zoos, s_l is averaged over
        them, weighted by their number of values. Every layer gets at least SIGMA_FLOOR."""
        from ..losses import SIGMA_FLOOR

        if kind not in ("standardized", "raw"):
            raise ValueError(f"token_statistics kind must be 'standardized' or 'raw', got {kind!r}")
        L = self.num_layers
        total, square, count, scale = (torch.zeros(L, dtype=torch.float64) for _ in range(4))
        for g in self.groups:
            tl = self.tokenizer.layouts[g.layout_id]
            # "raw" reads the weights themselves; otherwise standardised if the tokenizer is fitted
            std = False if kind == "raw" else self.tokenizer._standardizes(tl, None)
            for chunk in _chunks(g.splits["train"].weights):
                # streaming: a chunk of rows at a time, and of those a layer's tokens at a time
                for b in tl.blocks:
                    tokens = _window_tokens(tl, chunk, b.n0, b.n1, g, None, self.tokenizer.min_std, std)
                    mask = tl.value_mask[b.n0:b.n1]
                    values = tokens.double() * mask
                    layer = tl.positions[b.n0:b.n1, 1].repeat(len(chunk))
                    n = mask.sum(-1).double().repeat(len(chunk))
                    total.index_add_(0, layer, values.sum(-1).reshape(-1))
                    square.index_add_(0, layer, values.square().sum(-1).reshape(-1))
                    count.index_add_(0, layer, n)
                    if kind == "raw":
                        s_l = tl.std if tl.standardized else torch.ones(tl.num_layers, dtype=torch.float64)
                        scale.index_add_(0, layer, s_l[layer] * n)
        mean = total / count.clamp_min(1)
        sigma = (square / count.clamp_min(1) - mean.square()).clamp_min(0).sqrt()
        if kind == "raw":
            sigma = sigma / (scale / count.clamp_min(1)).clamp_min(1e-30)
        return torch.where(count > 0, sigma.clamp_min(SIGMA_FLOOR), torch.ones_like(sigma)).float()


def _rows_per_read(num_weights: int) -> int:
    return max(1, GATHER_LIMIT // num_weights)


def _chunks(weights: ZooRows | torch.Tensor):
    """The rows of a split in order, GATHER_LIMIT weights at a time (a ZooRows reads only those)."""
    step = _rows_per_read(weights.shape[1])
    for start in range(0, len(weights), step):
        yield weights[start:start + step]


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _permuted_source(flat: torch.Tensor, g: ZooGroup, perms: dict[str, torch.Tensor] | None):
    """tensor(entry, offset) -> [m, numel] for TokenLayout's kernels: an entry of flat rows [m, P]
    under each row's own function-preserving permutation (`perms`: {group: [m, n]}; None: as
    stored). Only the entries asked for are permuted, one gather per permuted axis: the same
    values as permuting the whole flat vector (weightspace.permute_flat)."""
    by_entry = {} if perms is None else g.spec.axes_by_entry()
    m = flat.shape[0]

    def tensor(entry, offset):
        values = flat[:, offset:offset + entry.numel]
        if entry.name not in by_entry:
            return values
        shape = entry.shape or (1,)
        values = values.reshape(m, *shape)
        for axis, group, block in by_entry[entry.name]:
            dim = 1 + axis % len(shape)
            p = perms[group]
            src = (p[:, :, None] * block + torch.arange(block)).reshape(m, -1)  # [m, n * block]
            view = [m] + [1] * len(shape)
            view[dim] = src.shape[1]
            values = values.gather(dim, src.view(view).expand_as(values))
        return values.reshape(m, entry.numel)

    return tensor


def _window_tokens(tl: TokenLayout, flat: torch.Tensor, start: int, stop: int, g: ZooGroup,
                   perms: dict[str, torch.Tensor] | None, min_std: float, standardize: bool | None = None) -> torch.Tensor:
    """Tokens start..stop-1 [m, n, T] of flat rows [m, P] (permuted by `perms` first), standardised
    as the tokenizer would (standardize None: if the layout is fitted)."""
    source = _permuted_source(flat, g, perms)
    std = tl.standardized if standardize is None else standardize
    if tl.self_normalized:  # per-model statistics span whole layers: tokenise the model, cut the range
        tokens = torch.empty(len(flat), tl.num_tokens, tl.token_size)
        tl.encode_into(tokens, source, False)
        if standardize is not False:
            tl.normalize_(tokens, min_std)
        return tokens[:, start:stop]
    tokens = torch.empty(len(flat), stop - start, tl.token_size)
    tl.encode_range_into(tokens, source, start, stop, std)
    return tokens


def _augment(tokens: torch.Tensor, value_mask: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    out = tokens
    if aug.multiplicative_noise > 0:
        out = multiplicative_noise(out, value_mask, aug.multiplicative_noise, generator)
    if aug.additive_noise > 0:
        out = additive_noise(out, value_mask, aug.additive_noise, generator)
    if aug.erase_probability > 0:
        out = block_erasing(out, value_mask, aug.erase_probability, generator=generator)
    return out


def align_splits(splits: dict[str, Split], tokenizer: WeightTokenizer, layout_id: int, spec: PermutationSpec) -> None:
    """Align every checkpoint of every split, in place, to the reference: the last checkpoint of
    the first train model. Each checkpoint is aligned on its own, exactly as the tokenizer (which
    keeps the reference) aligns a new model at inference, so training and embedding see the same
    distribution. (The reference code applies a model's last-epoch permutation to all its epochs,
    which an embedding of a single early checkpoint cannot reproduce.)"""
    train = splits["train"]
    first = np.flatnonzero(train.metadata["model_id"].to_numpy() == train.metadata["model_id"].iloc[0])
    reference = train.weights[int(first[np.argmax(train.metadata["epoch"].to_numpy()[first])])].clone()
    tokenizer.set_alignment(reference, spec, layout_id)
    for split in splits.values():
        if len(split):  # aligned rows live in memory (weight matching is too slow to redo per batch)
            split.weights = torch.cat([tokenizer.align_flat(chunk, layout_id) for chunk in _chunks(split.weights)])


def _read_split(zoo: Zoo, split: str, epochs: list[int] | None, drop_exploded: bool) -> Split:
    """The split's usable rows: one tensor if they fit IN_MEMORY_SPLIT_BYTES, else a lazy ZooRows
    (one streaming pass then reads each row once to find the diverged and exploded checkpoints;
    nothing of it stays in memory)."""
    if split not in zoo.splits:
        import pandas as pd

        return Split(torch.zeros(0, zoo.num_weights), pd.DataFrame({"model_id": [], "epoch": []}))
    metadata = zoo.metadata(split)
    keep = np.ones(len(metadata), dtype=bool)
    if epochs is not None:
        keep &= metadata["epoch"].isin(epochs).to_numpy()
    rows = zoo.rows(split)
    if int(keep.sum()) * 4 * zoo.num_weights <= IN_MEMORY_SPLIT_BYTES:
        rows = zoo.weights(split)
    kept = _select(rows, keep)
    finite, rms = [], []
    for chunk in _chunks(kept):
        finite.append(torch.isfinite(chunk).all(1))
        rms.append(_rms(chunk))
    finite = torch.cat(finite).numpy() if finite else np.zeros(0, bool)
    rms = torch.cat(rms) if rms else torch.zeros(0, dtype=torch.float64)
    # Diverged checkpoints (NaN / inf weights) cannot be tokenized; they carry no weight-space signal.
    keep[keep] &= finite
    # Exploded ones (weights 1000x the zoo's) would dominate the reconstruction loss and the statistics.
    exploded = _exploded(rms[torch.as_tensor(finite)]).numpy() if drop_exploded else np.zeros(int(keep.sum()), bool)
    keep[keep] &= ~exploded
    index = np.flatnonzero(keep)
    return Split(_select(rows, index), metadata.iloc[index].reset_index(drop=True), int(exploded.sum()))


def _select(rows: ZooRows | torch.Tensor, index: np.ndarray) -> ZooRows | torch.Tensor:
    """Rows picked by a boolean mask or indices: a ZooRows view (nothing read) or a new tensor."""
    return rows.select(index) if isinstance(rows, ZooRows) else rows[torch.as_tensor(index)].contiguous()


# A checkpoint whose root-mean-square weight is this many times the split's median has exploded
# (hyperparameter zoos: SGD from N(0, 1) or U(0, 1) inits; mnist-hyp: 100-7000x, the rest < 6x).
EXPLODED_FACTOR = 20.0


def exploded_rows(weights: torch.Tensor) -> torch.Tensor:
    """Flat finite weights [M, P] -> bool [M]: True where a row's root-mean-square weight exceeds
    EXPLODED_FACTOR x the median over the M rows. SANE trains without them (it still embeds them:
    the tokenizer's soft clip keeps their tokens bounded)."""
    return _exploded(_rms(weights))


def _rms(weights: torch.Tensor) -> torch.Tensor:
    return weights.double().square().mean(1).sqrt()


def _exploded(rms: torch.Tensor) -> torch.Tensor:
    return rms > EXPLODED_FACTOR * rms.median() if len(rms) else torch.zeros(0, dtype=torch.bool)


def _check_columns(name: str, zoo: Zoo, properties: Sequence[str]) -> None:
    for split in zoo.splits:
        columns = zoo.column_names(split)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"zoo {name}: split {split!r} lacks the required column(s) {missing}; a zoo row needs "
                             f"{list(REQUIRED_COLUMNS)} (build or import the zoo with hyperrep_hf)")
        absent = [p for p in properties if p not in columns]
        if absent:
            raise ValueError(f"zoo {name}: split {split!r} has no column(s) {absent} to probe; choose "
                             f"--probe_properties among {[c for c in columns if c != 'weights']}")
    if "train" not in zoo.splits:
        raise ValueError(f"zoo {name} has no train split (splits: {zoo.splits})")


def _common_token_size(loaded: list[tuple[str, Zoo]], token_size: int | str) -> int:
    """The token size all zoos share: the given one, or the one 'auto' picks for every architecture."""
    if token_size != "auto":
        return int(token_size)
    sizes = {}
    for name, zoo in loaded:
        tok = WeightTokenizer(token_size="auto")
        tok.layout_of(build_model(zoo.architecture, **zoo.architecture_kwargs))
        sizes[f"{name} ({zoo.architecture})"] = tok.token_size
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"the zoos' architectures have no common token size (automatic sizes {listing}); "
                         f"pass one token size for all, e.g. --token_size {max(sizes.values())}")
    return next(iter(sizes.values()))


def _short(epochs: list[int]) -> str:
    return str(epochs) if len(epochs) <= 6 else f"{epochs[0]}..{epochs[-1]}"
