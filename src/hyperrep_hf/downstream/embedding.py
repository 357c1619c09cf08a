"""Weights <-> latents with a trained SANE model, for models of any length.

A model whose token sequence is longer than the SANE window is encoded (and decoded) in sliding
windows with a halo (windows.sliding_windows): each window sees `halo` tokens of context on either
side of the part it keeps, so every token's latent is computed with context on both sides.

Permutation-averaged embeddings: a model and any permutation of its hidden neurons compute the
same function, but SANE (like any sequence model over tokens in neuron order) embeds them a little
apart. With `permutations=k` an embedding is the mean over k function-preserving permutations of
the model; the k permutations are drawn from `seed`, the same for every model, so the embedding is
one fixed function of the weights. It needs the permutation spec the trainer stores with the
tokenizer, and "mean" or "layer" pooling (a permuted sequence has no fixed token order to concatenate).
A neuron permutation moves standardised values between token slots of the same layer, so each
model is tokenised once and each permuted copy is one gather of its tokens (`TokenPermutation`);
only where tokenising is not elementwise (an alignment reference, self-normalised layouts) are the
permuted weights tokenised again.

Bounded memory: the rows [M, P] may be a lazy `ZooRows` (zoo.rows(split)): they are read
`batch_size` rows at a time, fewer where a chunk's tokens would pass EMBED_TOKEN_BYTES, so a split
of ResNet-18s is embedded a few models at a time.

Shapes: tokens [B, N, T], positions [B, N, 3], attention_mask [B, N], latents [B, N, L];
flat weights [M, P] in the zoo's WeightLayout order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers.utils.logging import tqdm  # transformers' tqdm: this file is remote code too

from ..modeling_sane import check_pooling, pool_latents
from ..weightspace.permutation import permute_flat
from ..windows import sliding_windows

# Tokens of one chunk of models at most (float32): bounds memory whatever the model (ResNet-18:
# 62 MB of tokens a model, so about 4 models a chunk; small models: batch_size a chunk).
EMBED_TOKEN_BYTES = 256 << 20
# Permutation gather indices (int64 [N * T] each) kept for the whole call up to this many bytes;
# beyond it (large models, many permutations) each is rebuilt per chunk, still once per chunk.
INDEX_CACHE_BYTES = 256 << 20


def _windowed(fn, x: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor, out_dim: int,
              window_size: int, halo: int) -> torch.Tensor:
    """Apply fn(x_w, positions_w, mask_w) -> [b, n_w, out_dim] window by window over [B, N, *].

    Rows of a padded batch with no real token in a window are skipped there (their output stays 0).
    """
    B, N = x.shape[:2]
    if N <= window_size:
        return fn(x, positions, attention_mask)
    out = x.new_zeros(B, N, out_dim)
    for w in sliding_windows(N, window_size, halo):
        mask = attention_mask[:, w.slice]
        rows = mask.bool().any(1)
        if not rows.any():
            continue
        y = fn(x[rows, w.slice], positions[rows, w.slice], mask[rows])
        out[rows, w.keep_start : w.keep_stop] = y[:, w.keep]
    return out


def _window_args(model, window_size: int | None, halo: int | None) -> tuple[int, int]:
    window_size = int(window_size or model.config.window_size)
    halo = window_size // 4 if halo is None else int(halo)
    if halo < 0 or window_size - 2 * halo < 1:
        raise ValueError(f"halo must be in 0..{(window_size - 1) // 2} for window_size {window_size}, got {halo}")
    return window_size, halo


@torch.no_grad()
def encode(model, encoding: Mapping, window_size: int | None = None, halo: int | None = None) -> torch.Tensor:
    """Tokenizer output (tokens, positions, attention_mask) -> latents [B, N, latent_dim].

    Sequences longer than `window_size` (default: the model's training window) go through sliding
    windows with `halo` context tokens each side (default window_size // 4: 64 of 256, as published).
    """
    window_size, halo = _window_args(model, window_size, halo)
    tokens = torch.as_tensor(encoding["tokens"]).to(model.device, model.dtype)
    positions = torch.as_tensor(encoding["positions"]).to(model.device)
    mask = encoding.get("attention_mask")
    mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=model.device) if mask is None else torch.as_tensor(mask).to(model.device)
    model.eval()
    return _windowed(model.encode, tokens, positions, mask, model.config.latent_dim, window_size, halo)


@torch.no_grad()
def decode(model, latents: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None,
           window_size: int | None = None, halo: int | None = None) -> torch.Tensor:
    """latents [B, N, latent_dim] -> (standardised) tokens [B, N, token_size], in windows like `encode`."""
    window_size, halo = _window_args(model, window_size, halo)
    latents = torch.as_tensor(latents).to(model.device, model.dtype)
    positions = torch.as_tensor(positions).to(model.device)
    if attention_mask is None:
        attention_mask = torch.ones(latents.shape[:2], dtype=torch.long, device=model.device)
    model.eval()
    return _windowed(model.decode, latents, positions, torch.as_tensor(attention_mask).to(model.device),
                     model.config.token_size, window_size, halo)


def _rows(weights):
    """Flat weights [M, P]: a tensor (or array) or a lazy ZooRows, which is read chunk by chunk."""
    if not torch.is_tensor(weights) and hasattr(weights, "shape") and hasattr(weights, "select"):
        return weights
    weights = torch.as_tensor(weights)
    if weights.dim() != 2:
        raise ValueError(f"expected flat weights [num_models, num_weights], got shape {list(weights.shape)}")
    return weights


def chunk_size(tokenizer, layout_id: int, batch_size: int) -> int:
    """Models per chunk: batch_size, fewer where their tokens would pass EMBED_TOKEN_BYTES."""
    tl = tokenizer.layouts[layout_id]
    return max(1, min(int(batch_size), EMBED_TOKEN_BYTES // (4 * tl.num_tokens * tl.token_size)))


def encode_flat(model, tokenizer, weights: torch.Tensor, layout_id: int = 0, batch_size: int = 64,
                window_size: int | None = None, halo: int | None = None, progress: bool = False) -> torch.Tensor:
    """Flat zoo weights [M, P] (a tensor or a lazy ZooRows) of one tokenizer layout -> latents
    [M, N, latent_dim] (on the CPU)."""
    weights = _rows(weights)
    step = chunk_size(tokenizer, layout_id, batch_size)
    parts = []
    for start in tqdm(range(0, len(weights), step), desc="encode", disable=not progress, unit="batch"):
        enc = tokenizer.tokenize_flat(weights[start : start + step], layout_id=layout_id)
        parts.append(encode(model, enc, window_size, halo).cpu())
    return torch.cat(parts)


def check_permutations(permutations: int, pooling: str = "mean") -> int:
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 0:
        raise ValueError(f"permutations must be an integer >= 0 (0: the model as given), got {permutations!r}")
    if permutations and pooling == "full":
        raise ValueError("permutation-averaged embeddings need pooling='mean' or 'layer' (a permuted sequence has no "
                         "fixed token order to concatenate); use permutations=0 with pooling='full'")
    return permutations


def permuted_views(tokenizer, weights: torch.Tensor, layout_id: int, permutations: int, seed: int = 0) -> torch.Tensor:
    """Flat weights [M, P] -> [k, M, P]: every model under the same k function-preserving neuron
    permutations, drawn from `seed` with the layout's stored PermutationSpec."""
    spec = tokenizer.permutation_spec(layout_id)
    layout = tokenizer.layouts[layout_id].weights
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([permute_flat(weights, layout, spec, spec.random(generator=generator)) for _ in range(permutations)])


class TokenPermutation:
    """Function-preserving permutations of one layout as gathers of its tokens: for a permutation
    `perms` of the layout's PermutationSpec, `gather(tokens, k)` ([B, N, T] -> [B, N, T]) equals
    `tokenize_flat(permute_flat(weights, ...))` bit for bit, without tokenising again (a neuron
    permutation moves values between slots of one layer, and per-layer standardisation and the
    soft clip are elementwise; padding slots stay put). Holds the k permutations' gather indices
    (int64 [N * T] each), built on first use and kept up to INDEX_CACHE_BYTES in all."""

    def __init__(self, tokenizer, layout_id: int, perms: list[dict]):
        tl = tokenizer.layouts[layout_id]
        self.layout, self.spec, self.perms = tl, tokenizer.permutation_spec(layout_id), perms
        P = tl.weights.num_weights
        # the token slot of every flat weight: tokenise the indices 1..P (0 marks padding)
        grid = torch.empty(1, tl.num_tokens, tl.token_size, dtype=torch.long)
        tl.encode_into(grid, lambda e, o: torch.arange(o + 1, o + 1 + e.numel).unsqueeze(0), False)
        self.grid = grid.reshape(-1)
        self.real = self.grid > 0
        self.slot = torch.empty(P, dtype=torch.long)
        self.slot[self.grid[self.real] - 1] = torch.nonzero(self.real).flatten()
        self.keep = 8 * self.grid.numel() * len(perms) <= INDEX_CACHE_BYTES
        self._index: dict[int, torch.Tensor] = {}

    @staticmethod
    def applies(tokenizer, layout_id: int) -> bool:
        """Whether the layout's tokens permute as an index map (no alignment, per-layer statistics)."""
        tl = tokenizer.layouts[layout_id]
        return tl.alignment is None and not getattr(tl, "self_normalized", False)

    def index(self, k: int) -> torch.Tensor:
        """[N * T] int64: permuted_tokens.flatten(1) = tokens.flatten(1)[:, index]."""
        if k in self._index:
            return self._index[k]
        source = permute_flat(torch.arange(self.slot.numel()), self.layout.weights, self.spec, self.perms[k])
        index = torch.arange(self.grid.numel())  # padding slots keep their own (zero) value
        index[self.real] = self.slot[source[self.grid[self.real] - 1]]
        if self.keep:
            self._index[k] = index
        return index

    def gather(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        B, N, T = tokens.shape
        return tokens.reshape(B, N * T)[:, self.index(k)].reshape(B, N, T)


def embed_flat(model, tokenizer, weights: torch.Tensor, pooling: str = "mean", layout_id: int = 0,
               batch_size: int = 64, window_size: int | None = None, halo: int | None = None,
               progress: bool = False, permutations: int = 0, seed: int = 0) -> torch.Tensor:
    """Flat zoo weights [M, P] (a tensor or a lazy ZooRows, read a chunk at a time) -> embeddings
    [M, latent_dim] ("mean"), [M, num_layers * latent_dim] ("layer") or [M, N * latent_dim]
    ("full"); with `permutations=k` > 0 the mean embedding over k permutations of each model
    (module docstring: each model is tokenised once, each permutation is a gather)."""
    check_pooling(pooling)
    check_permutations(permutations, pooling)
    weights = _rows(weights)
    step = chunk_size(tokenizer, layout_id, batch_size)
    gathers = None
    if permutations and TokenPermutation.applies(tokenizer, layout_id):
        spec = tokenizer.permutation_spec(layout_id)
        generator = torch.Generator().manual_seed(seed)  # the draws of permuted_views
        gathers = TokenPermutation(tokenizer, layout_id, [spec.random(generator=generator) for _ in range(permutations)])
    parts = []
    for start in tqdm(range(0, len(weights), step), desc="embed", disable=not progress, unit="batch"):
        chunk = weights[start : start + step]
        if gathers is not None:
            base = tokenizer.tokenize_flat(chunk, layout_id=layout_id)
            views = ({**base, "tokens": gathers.gather(base["tokens"], k)} for k in range(permutations))
        else:
            flats = permuted_views(tokenizer, chunk, layout_id, permutations, seed) if permutations else chunk[None]
            views = (tokenizer.tokenize_flat(view, layout_id=layout_id) for view in flats)
        embeddings = []
        for enc in views:
            latents = encode(model, enc, window_size, halo)
            embeddings.append(pool_latents(latents, enc["attention_mask"], pooling, enc["positions"]).cpu())
        parts.append(torch.stack(embeddings).mean(0))
    return torch.cat(parts)


def decode_flat(model, tokenizer, latents: torch.Tensor, layout_id: int = 0, batch_size: int = 64,
                window_size: int | None = None, halo: int | None = None) -> torch.Tensor:
    """Latents [k, N, latent_dim] of one tokenizer layout -> flat weights [k, P], de-standardised by
    the tokenizer (its fitted per-layer statistics are inverted)."""
    latents = torch.as_tensor(latents)
    layout = tokenizer.layouts[layout_id]
    if latents.dim() != 3 or latents.shape[1] != layout.num_tokens or latents.shape[2] != model.config.latent_dim:
        raise ValueError(
            f"expected latents [num_models, {layout.num_tokens}, {model.config.latent_dim}] for this layout, "
            f"got shape {list(latents.shape)}"
        )
    parts = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size]
        positions = layout.positions.unsqueeze(0).expand(len(chunk), -1, -1)
        tokens = decode(model, chunk, positions, None, window_size, halo).float().cpu()
        parts.append(tokenizer.decode_flat(tokens, layout_id=layout_id))
    return torch.cat(parts)
