"""Augmentations of token batches (METHOD.md §5): noise and erasing. Window cutting lives with the
tokenizer's window operations.

Every function takes tokens [B, N, T] and a mask of the real values, [B, N, T] (True = weight,
False = padding) or [B, N] (True = real token; then every value of a real token counts as real),
and returns a new tensor: the input is never changed in place and padding stays exactly as it was.
Randomness comes from an optional torch.Generator, so views are reproducible.
"""

from __future__ import annotations

import torch


def _value_mask(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if tokens.dim() != 3:
        raise ValueError(f"expected tokens [batch, n_tokens, token_size], got shape {list(tokens.shape)}")
    if mask.shape == tokens.shape[:2]:
        mask = mask[..., None].expand_as(tokens)
    if mask.shape != tokens.shape:
        raise ValueError(f"mask of shape {list(mask.shape)} fits neither the values {list(tokens.shape)} nor the tokens {list(tokens.shape[:2])}")
    return mask.bool()


def _randn(tokens: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device, then move: CPU generators also serve GPU batches.
    device = generator.device if generator is not None else tokens.device
    return torch.randn(tokens.shape, generator=generator, device=device, dtype=tokens.dtype).to(tokens.device)


def multiplicative_noise(tokens: torch.Tensor, mask: torch.Tensor, sigma: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """x * (1 + sigma * N(0, 1)) on every real value (SANE uses sigma = 0.1)."""
    mask = _value_mask(tokens, mask)
    return torch.where(mask, tokens * (1 + sigma * _randn(tokens, generator)), tokens)


def additive_noise(tokens: torch.Tensor, mask: torch.Tensor, sigma: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + sigma * N(0, 1) on every real value."""
    mask = _value_mask(tokens, mask)
    return torch.where(mask, tokens + sigma * _randn(tokens, generator), tokens)


def block_erasing(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability `p` per sample, zero one contiguous block of its real values whose length is
    a uniform fraction in `scale` of the sample's real values ("contiguous" in the order of the
    real values, padding skipped). Vectorised over the batch.
    """
    if not 0.0 <= p <= 1.0 or not 0.0 <= scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"block_erasing needs 0 <= p <= 1 and 0 <= scale[0] <= scale[1] <= 1, got p={p}, scale={scale}")
    mask = _value_mask(tokens, mask)
    batch = tokens.shape[0]
    flat_mask = mask.reshape(batch, -1)
    device = generator.device if generator is not None else tokens.device
    u = torch.rand(batch, 3, generator=generator, device=device).to(tokens.device)
    num_real = flat_mask.sum(dim=1)
    length = (num_real * (scale[0] + (scale[1] - scale[0]) * u[:, 0])).round().long().clamp(min=1).minimum(num_real)
    start = (u[:, 1] * (num_real - length + 1)).floor().long().minimum(num_real - length)
    erase = u[:, 2] < p
    rank = flat_mask.cumsum(dim=1) - 1  # position of each real value among the sample's real values
    hit = flat_mask & (rank >= start[:, None]) & (rank < (start + length)[:, None]) & erase[:, None]
    return tokens.masked_fill(hit.reshape(tokens.shape), 0.0)
