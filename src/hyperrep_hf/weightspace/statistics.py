"""The s(W) baseline features (METHOD.md §6), Unterthiner et al. 2020 style.

For every entry of the weight layout (each state_dict tensor on its own: a layer's weight and bias
apart, BatchNorm's running statistics included) seven numbers of its RAW weights: mean, variance
(population, ddof=0) and the 1st, 25th, 50th, 75th and 99th percentiles (linear interpolation, as
numpy.percentile's default). Computed for a whole zoo batch at once: one sort per entry, no loop
over models. The "stats" probe is linear on them; "stats-gbt" (downstream.trees) puts
gradient-boosted trees on them, as Unterthiner et al. do.

This is not SANE's "LayerQuintiles" baseline, which takes the same seven statistics per layer
(weight and bias together) over the layer's tokens: after the per-layer standardisation, and over
the zero padding of its tokens. Raw per-tensor statistics keep the scale of the weights (a weight
norm that grows with training, a bias apart from its weight) that standardised tokens remove.
"""

from __future__ import annotations

import numpy as np
import torch

from ..layout import WeightLayout

STATISTICS = ("mean", "var", "p1", "p25", "p50", "p75", "p99")
_QUANTILES = (0.01, 0.25, 0.50, 0.75, 0.99)


def statistics_names(layout: WeightLayout) -> list[str]:
    """Feature names in column order, e.g. "0.weight/mean", "0.weight/p99", "0.bias/mean"."""
    return [f"{name}/{stat}" for name in layout.names for stat in STATISTICS]


def _quantiles(values: torch.Tensor) -> torch.Tensor:
    """values [M, n] (float32 or float64) -> [M, 5] float64 percentiles, numpy's linear interpolation."""
    if values.device.type == "cpu":  # numpy's sort is several times faster than torch's on CPU
        ordered = torch.from_numpy(np.sort(values.detach().numpy(), axis=1))
    else:
        ordered = values.sort(dim=1).values
    ordered = ordered.to(torch.float64)
    pos = torch.tensor(_QUANTILES, dtype=torch.float64, device=values.device) * (values.shape[1] - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    return ordered[:, lo] + (ordered[:, hi] - ordered[:, lo]) * (pos - lo)


def weight_statistics(flat: torch.Tensor, layout: WeightLayout, max_elements: int = 2**25) -> tuple[torch.Tensor, list[str]]:
    """s(W): flat weights [M, P] (or [P]) -> (features [M, 7 * len(layout)] float32, names).

    Statistics are computed in float64; models are processed in chunks of at most `max_elements`
    values per entry to bound memory on large models.
    """
    squeeze = flat.dim() == 1
    flat = flat[None] if squeeze else flat
    if flat.dim() != 2 or flat.shape[1] != layout.num_weights:
        raise ValueError(f"expected flat weights [M, P] with P = {layout.num_weights}, got shape {list(flat.shape)}")
    columns = []
    for entry, offset in zip(layout.entries, layout.offsets):
        n = entry.numel
        chunk = max(1, max_elements // max(n, 1))
        parts = []
        for start in range(0, flat.shape[0], chunk):
            values = flat[start : start + chunk, offset : offset + n]
            # sorting in float32 orders like float64 and is faster; other dtypes go through float64
            ordered = values if values.dtype == torch.float32 else values.to(torch.float64)
            values = values.detach().to(torch.float64)
            mean = values.mean(dim=1, keepdim=True)
            var = values.var(dim=1, correction=0, keepdim=True)
            parts.append(torch.cat([mean, var, _quantiles(ordered)], dim=1))
        columns.append(torch.cat(parts, dim=0))
    features = torch.cat(columns, dim=1).to(torch.float32)
    return (features[0] if squeeze else features), statistics_names(layout)
