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


def encode_flat(model, tokenizer, weights: torch.Tensor, layout_id: int = 0, batch_size: int = 64,
                window_size: int | None = None, halo: int | None = None, progress: bool = False) -> torch.Tensor:
    """Flat zoo weights [M, P] of one tokenizer layout -> latents [M, N, latent_dim] (on the CPU)."""
    weights = torch.as_tensor(weights)
    if weights.dim() != 2:
        raise ValueError(f"expected flat weights [num_models, num_weights], got shape {list(weights.shape)}")
    parts = []
    for start in tqdm(range(0, len(weights), batch_size), desc="encode", disable=not progress, unit="batch"):
        enc = tokenizer.tokenize_flat(weights[start : start + batch_size], layout_id=layout_id)
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


def embed_flat(model, tokenizer, weights: torch.Tensor, pooling: str = "mean", layout_id: int = 0,
               batch_size: int = 64, window_size: int | None = None, halo: int | None = None,
               progress: bool = False, permutations: int = 0, seed: int = 0) -> torch.Tensor:
    """Flat zoo weights [M, P] -> embeddings [M, latent_dim] ("mean"), [M, num_layers * latent_dim]
    ("layer") or [M, N * latent_dim] ("full"); with `permutations=k` > 0 the mean embedding over k
    permutations of each model (module docstring)."""
    check_pooling(pooling)
    check_permutations(permutations, pooling)
    weights = torch.as_tensor(weights)
    parts = []
    for start in tqdm(range(0, len(weights), batch_size), desc="embed", disable=not progress, unit="batch"):
        chunk = weights[start : start + batch_size]
        views = permuted_views(tokenizer, chunk, layout_id, permutations, seed) if permutations else chunk[None]
        embeddings = []
        for view in views:
            enc = tokenizer.tokenize_flat(view, layout_id=layout_id)
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
