"""Losses that train SANE (METHOD.md §4): masked reconstruction, NT-Xent, and their gamma mix.

This file imports only torch so that it can be copied next to a checkpoint as remote code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Layers whose weights barely vary would otherwise divide the error by ~0 (METHOD.md §4).
SIGMA_FLOOR = 1e-4


def masked_reconstruction_mse(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    sigma: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over the real values of a batch of token sequences.

    Args:
        reconstruction, target: [B, N, T] decoded and original (standardised) tokens.
        mask: [B, N, T] bool, True where a value is real (not token padding, not sequence padding);
            None when every value is real.
        sigma: optional [B, N] per-token scale, the std of the token's layer (layer-wise loss
            normalisation): the error of each value is divided by it (floored at 1e-4), which is the
            same as dividing output and target by sigma_l. On tokens already standardised per layer
            a sigma_l computed from those tokens is close to 1 and changes little; the published
            variant divides by the raw weights' spread (see SaneModel.set_layer_sigma).

    Returns:
        0-d tensor: sum over real values of ((reconstruction - target) / sigma)^2 / number of real values.
    """
    if reconstruction.shape != target.shape or (mask is not None and mask.shape != target.shape):
        raise ValueError(
            f"reconstruction {tuple(reconstruction.shape)}, target {tuple(target.shape)} and mask "
            f"{None if mask is None else tuple(mask.shape)} must have the same shape [batch, tokens, token_size]."
        )
    error = reconstruction - target
    if sigma is not None:
        error = error / sigma.clamp_min(SIGMA_FLOOR).unsqueeze(-1)
    if mask is None:
        return error.square().mean()
    mask = mask.to(error.dtype)
    count = mask.sum()
    if count.item() == 0:
        raise ValueError("The mask marks no real values: there is nothing to reconstruct.")
    return (error.square() * mask).sum() / count


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent contrastive loss of SimCLR over two views.

    Args:
        z1, z2: [B, D] projections; row i of z1 and row i of z2 are two views of the same model.
        temperature: tau; cosine similarities are divided by it.

    Returns:
        0-d tensor: mean over the 2B views of the cross-entropy of picking the other view of the
        same model among the 2B - 1 other views (the 2(B-1) views of other models are negatives).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two [batch, dim] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    # A view is never its own negative.
    self_pairs = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(logits, positives)


def sane_loss(contrastive: torch.Tensor, reconstruction: torch.Tensor, gamma: float) -> torch.Tensor:
    """The SANE objective: gamma * contrastive + (1 - gamma) * reconstruction."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}.")
    return gamma * contrastive + (1.0 - gamma) * reconstruction


__all__ = ["SIGMA_FLOOR", "masked_reconstruction_mse", "nt_xent", "sane_loss"]
