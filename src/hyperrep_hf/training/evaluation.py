"""Evaluation during training: reconstruction of held-out zoo rows and linear probes on embeddings.

One pass over a split gives both: every row is tokenized (standardised, not augmented), cut into
sliding windows of the training window size, reconstructed, and its embedding is the mean of its
token latents over all windows (METHOD.md §2, "mean over tokens of the latent").
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from ..downstream.embedding import chunk_size
from ..downstream.probes import ProbeSet
from ..losses import SIGMA_FLOOR
from ..windows import sliding_windows
from .data import ZooData


@torch.no_grad()
def encode_split(model, data: ZooData, split: str, window_size: int, batch_size: int = 64,
                 device: torch.device | str = "cpu", autocast=None) -> dict:
    """Reconstruct and embed every row of `split`.

    Returns {"embeddings": [rows, latent_dim] float32 (global row order), "reconstruction_loss":
    the model's (layer-normalised) masked MSE averaged over real values, "reconstruction_r2":
    1 - SSE / SST over the real values of the standardised tokens, "rows": rows}.
    """
    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    embeddings, weighted_loss = [], 0.0
    sse = total = square = count = 0.0
    core = getattr(model, "module", model)
    norm = core.config.layer_loss_norm
    sigma = core.layer_sigma.clamp_min(SIGMA_FLOOR)
    try:
        for g in data.groups:
            weights = g.splits[split].weights
            windows = sliding_windows(g.num_tokens, window_size)
            step = chunk_size(data.tokenizer, g.layout_id, batch_size)  # bounded tokens per chunk, as embedding does
            for start in range(0, len(weights), step):
                enc = data.tokenizer.tokenize_flat(weights[start:start + step], g.layout_id, align=False)
                enc = {k: enc[k].to(device) for k in ("tokens", "positions", "attention_mask", "value_mask")}
                latent_sum = 0.0
                for w in windows:
                    part = {k: v[:, w.slice] for k, v in enc.items()}
                    with autocast():
                        out = model(part["tokens"], part["positions"], part["attention_mask"])
                    # only the kept part of a window counts: the last window may overlap the one before
                    kept = {k: v[:, w.keep] for k, v in part.items()}
                    rec, latents = out.reconstruction[:, w.keep].double(), out.latents[:, w.keep].float()
                    mask, target = kept["value_mask"], kept["tokens"].double()
                    error = rec - target
                    if norm:
                        error = error / sigma[kept["positions"][..., 1]].double().unsqueeze(-1)
                    n = float(mask.sum())
                    weighted_loss += float((error.square() * mask).sum())
                    sse += float(((rec - target).square() * mask).sum())
                    total += float((target * mask).sum())
                    square += float((target.square() * mask).sum())
                    count += n
                    latent_sum = latent_sum + latents.sum(1)
                embeddings.append((latent_sum / g.num_tokens).cpu())
    finally:
        model.train(was_training)
    rows = sum(len(g.splits[split]) for g in data.groups)
    if rows == 0:
        raise ValueError(f"the {split} split holds no rows to evaluate")
    sst = square - total * total / count
    return {"embeddings": torch.cat(embeddings), "reconstruction_loss": weighted_loss / count,
            "reconstruction_r2": 1.0 - sse / sst if sst > 0 else float("nan"), "rows": rows}


def probe_scores(data: ZooData, embeddings: dict[str, torch.Tensor], properties: Sequence[str]) -> dict[str, float]:
    """Fit ridge probes of `properties` on train embeddings (penalty chosen on validation R^2) and
    score them: {"probe_val_r2/<p>": ..., "probe_test_r2/<p>": ...} (accuracy for categorical
    properties). `embeddings` maps split -> [rows, d]; "test" is optional."""
    if not properties:
        return {}
    targets = {s: {p: data.metadata(s, p) for p in properties} for s in embeddings}
    probes = ProbeSet.fit("sane", embeddings["train"], targets["train"], embeddings["validation"], targets["validation"])
    scores = {}
    for p, probe in probes.probes.items():
        key = "r2" if probe.kind == "regression" else "accuracy"
        scores[f"probe_val_{key}/{p}"] = float(probe.validation[key])
    if "test" in embeddings and len(embeddings["test"]):
        for p, s in probes.evaluate(embeddings["test"], targets["test"]).items():
            key = "r2" if "r2" in s else "accuracy"
            scores[f"probe_test_{key}/{p}"] = float(s[key])
    return scores
