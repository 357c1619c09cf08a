"""The training data pipeline: zoo rows -> standardised tokens -> two augmented views -> batches.

    data = ZooData.from_zoos(["zoos/mnist-seed"], token_size="auto", epochs=None)
    views = data.training_batch(rows, window_size=64, generator=g, augmentation=Augmentation())
    model(**views.model_inputs(), num_views=2)

Everything is a batched tensor operation on a batch's flat weights [B, P] (one Python step per
architecture and per weight layer, never per model): a function-preserving permutation per view is
one gather, tokenizing is one strided copy per layer, the window is one gather per tensor.

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
    permute_flat,
)
from ..windows import random_window_starts, take_windows
from ..zoo import Zoo, build_model, load_zoo

REQUIRED_COLUMNS = ("weights", "model_id", "epoch")
SPLITS = ("train", "validation", "test")


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
    """The rows of one split of one zoo: weights [M, P] float32 and their metadata (a DataFrame);
    `exploded`: how many exploded checkpoints were left out (see `exploded_rows`)."""

    weights: torch.Tensor
    metadata: object
    exploded: int = 0

    def __len__(self) -> int:
        return int(self.weights.shape[0])


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
                tokenizer.fit_standardization(g.splits["train"].weights, layout_id=g.layout_id)
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
        views get the SAME random window.
        """
        views = [[], []]
        for g, local in self.locate("train", rows):
            flat = g.splits["train"].weights[local]
            for v in range(2):
                w = flat
                if augmentation.permutes(v) and g.spec is not None:
                    w = _permute_rows(flat, g, generator)
                enc = self.tokenizer.tokenize_flat(w, g.layout_id, align=False)
                views[v].append({k: enc[k] for k in ("tokens", "positions", "attention_mask", "value_mask")})
        view1, view2 = _pad_cat(views[0]), _pad_cat(views[1])
        lengths = view1["attention_mask"].sum(1)
        window = min(window_size, int(lengths.max()))
        starts = random_window_starts(lengths, window, generator)
        cut = [{k: take_windows(v[k], starts, window) for k in v} for v in (view1, view2)]
        targets = torch.cat([c["tokens"] for c in cut])
        value_mask = torch.cat([c["value_mask"] for c in cut])
        inputs = _augment(targets, value_mask, augmentation, generator)
        return TokenBatch(inputs, targets, torch.cat([c["positions"] for c in cut]),
                          torch.cat([c["attention_mask"] for c in cut]), value_mask)

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
            weights = g.splits["train"].weights
            for start in range(0, len(weights), 1024):
                # "raw" reads the weights themselves; None: standardised if the tokenizer is fitted
                enc = self.tokenizer.tokenize_flat(weights[start:start + 1024], g.layout_id, align=False,
                                                   standardize=False if kind == "raw" else None)
                values = enc["tokens"].double() * enc["value_mask"]
                layer = enc["positions"][..., 1].reshape(-1)
                n = enc["value_mask"].sum(-1).reshape(-1).double()
                total.index_add_(0, layer, values.sum(-1).reshape(-1))
                square.index_add_(0, layer, values.square().sum(-1).reshape(-1))
                count.index_add_(0, layer, n)
                if kind == "raw":
                    tl = self.tokenizer.layouts[g.layout_id]
                    s_l = tl.std if tl.standardized else torch.ones(tl.num_layers, dtype=torch.float64)
                    scale.index_add_(0, layer, s_l[layer] * n)
        mean = total / count.clamp_min(1)
        sigma = (square / count.clamp_min(1) - mean.square()).clamp_min(0).sqrt()
        if kind == "raw":
            sigma = sigma / (scale / count.clamp_min(1)).clamp_min(1e-30)
        return torch.where(count > 0, sigma.clamp_min(SIGMA_FLOOR), torch.ones_like(sigma)).float()


# Above this many elements a batched gather index [B, P] (int64) costs too much memory (a batch of
# ResNet-18s: gigabytes); rows are then permuted one at a time with the same random draws.
GATHER_LIMIT = 1 << 24


def _permute_rows(flat: torch.Tensor, g: ZooGroup, generator: torch.Generator) -> torch.Tensor:
    """flat [B, P] -> each row under its own random function-preserving permutation."""
    perms = g.spec.random(len(flat), generator)
    if flat.numel() <= GATHER_LIMIT:
        return permute_flat(flat, g.zoo.layout, g.spec, perms)
    return torch.stack([permute_flat(flat[i], g.zoo.layout, g.spec, {k: v[i] for k, v in perms.items()})
                        for i in range(len(flat))])


def _augment(tokens: torch.Tensor, value_mask: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    out = tokens
    if aug.multiplicative_noise > 0:
        out = multiplicative_noise(out, value_mask, aug.multiplicative_noise, generator)
    if aug.additive_noise > 0:
        out = additive_noise(out, value_mask, aug.additive_noise, generator)
    if aug.erase_probability > 0:
        out = block_erasing(out, value_mask, aug.erase_probability, generator=generator)
    return out


def _pad_cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate encodings along the batch, zero-padding the token dimension to the longest."""
    if len(parts) == 1:
        return {k: v.contiguous() for k, v in parts[0].items()}
    n = max(p["tokens"].shape[1] for p in parts)
    out = {}
    for key in parts[0]:
        padded = []
        for p in parts:
            x = p[key]
            if x.shape[1] < n:
                pad = torch.zeros((x.shape[0], n - x.shape[1], *x.shape[2:]), dtype=x.dtype)
                x = torch.cat([x, pad], dim=1)
            padded.append(x)
        out[key] = torch.cat(padded)
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
        if len(split):
            split.weights = tokenizer.align_flat(split.weights, layout_id)


def _read_split(zoo: Zoo, split: str, epochs: list[int] | None, drop_exploded: bool) -> Split:
    if split not in zoo.dataset:
        import pandas as pd

        return Split(torch.zeros(0, zoo.num_weights), pd.DataFrame({"model_id": [], "epoch": []}))
    metadata = zoo.metadata(split)
    weights = zoo.weights(split)
    keep = np.ones(len(metadata), dtype=bool)
    if epochs is not None:
        keep &= metadata["epoch"].isin(epochs).to_numpy()
    # Diverged checkpoints (NaN / inf weights) cannot be tokenized; they carry no weight-space signal.
    keep &= torch.isfinite(weights).all(1).numpy()
    # Exploded ones (weights 1000x the zoo's) would dominate the reconstruction loss and the statistics.
    exploded = exploded_rows(weights[torch.as_tensor(keep)]).numpy() if drop_exploded else np.zeros(int(keep.sum()), bool)
    keep[keep] &= ~exploded
    index = np.flatnonzero(keep)
    return Split(weights[torch.as_tensor(index)].contiguous(), metadata.iloc[index].reset_index(drop=True),
                 int(exploded.sum()))


# A checkpoint whose root-mean-square weight is this many times the split's median has exploded
# (hyperparameter zoos: SGD from N(0, 1) or U(0, 1) inits; mnist-hyp: 100-7000x, the rest < 6x).
EXPLODED_FACTOR = 20.0


def exploded_rows(weights: torch.Tensor) -> torch.Tensor:
    """Flat finite weights [M, P] -> bool [M]: True where a row's root-mean-square weight exceeds
    EXPLODED_FACTOR x the median over the M rows. SANE trains without them (it still embeds them:
    the tokenizer's soft clip keeps their tokens bounded)."""
    rms = weights.double().square().mean(1).sqrt()
    return rms > EXPLODED_FACTOR * rms.median() if len(rms) else torch.zeros(0, dtype=torch.bool)


def _check_columns(name: str, zoo: Zoo, properties: Sequence[str]) -> None:
    for split, ds in zoo.dataset.items():
        missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
        if missing:
            raise ValueError(f"zoo {name}: split {split!r} lacks the required column(s) {missing}; a zoo row needs "
                             f"{list(REQUIRED_COLUMNS)} (build or import the zoo with hyperrep_hf)")
        absent = [p for p in properties if p not in ds.column_names]
        if absent:
            raise ValueError(f"zoo {name}: split {split!r} has no column(s) {absent} to probe; choose "
                             f"--probe_properties among {[c for c in ds.column_names if c != 'weights']}")
    if "train" not in zoo.dataset:
        raise ValueError(f"zoo {name} has no train split (splits: {list(zoo.dataset)})")


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
