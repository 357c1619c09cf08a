"""Samplers in latent space: where new models come from (METHOD.md §6).

All samplers work on anchor latents of any shape [A, ...] (for SANE: the full token sequence of
latents [A, num_tokens, latent_dim] of the zoo's models) and draw new latents [k, ...] with a seeded
`torch.Generator`; decoding the latents into weights is the caller's job (downstream.generation).

- `KDESampler`: a Gaussian kernel density over the anchors with a per-dimension (diagonal) bandwidth.
  A draw picks ONE anchor at random and adds independent Gaussian noise to every dimension: a proper
  draw from the joint density. (The reference code seeds every per-dimension KDE with the same
  random_state, so all dimensions pick the same anchor and the same noise offset; METHOD.md §6 FLAW.)
- `GaussianSampler`: an independent Gaussian per dimension. `GaussianSampler.published` is the weak
  baseline GAUSS of METHOD.md §6 (N(0, 10^2) in every latent dimension, the anchors ignored);
  `GaussianSampler.fit` (method "gauss-fit") fits mean and std per dimension to the anchors.
- `neighbour_sampler`: a KDE centred on a few prompt latents: models near given models.
- `sub_sample` (SUB): draw k, score each, keep the best m (from any sampler with `.sample(k, generator)`,
  the GAN and diffusion samplers of downstream.generative included). `boot_sample` (BOOT): refit the
  KDE on the best and repeat.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""Scores a batch of latents [k, ...] -> [k] (higher is better, e.g. validation accuracy of the decoded model)."""


def _as_anchors(anchors: torch.Tensor) -> torch.Tensor:
    anchors = torch.as_tensor(anchors)
    if anchors.dim() < 2 or anchors.shape[0] < 1:
        raise ValueError(f"anchors must be [num_anchors, ...] with at least one anchor, got shape {list(anchors.shape)}")
    if not torch.isfinite(anchors).all():
        raise ValueError("anchors hold NaN or infinite values")
    return anchors.float()


def _check_count(num_samples: int) -> int:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}; ask for at least one sample")
    return num_samples


def silverman_bandwidth(anchors: torch.Tensor) -> torch.Tensor:
    """Silverman's rule of thumb, per dimension: 0.9 * min(std, IQR / 1.34) * A^(-1/5).

    anchors [A, ...] -> bandwidth of the anchors' trailing shape. Dimensions where the rule gives 0
    (IQR 0, e.g. a few identical values) fall back to the std; constant dimensions stay at 0.
    """
    flat = _as_anchors(anchors).flatten(1).double()
    num = flat.shape[0]
    std = flat.std(0, unbiased=num > 1) if num > 1 else torch.zeros(flat.shape[1], dtype=torch.float64)
    q = torch.quantile(flat, torch.tensor([0.25, 0.75], dtype=torch.float64), dim=0)
    iqr = (q[1] - q[0]) / 1.34
    spread = torch.where(iqr > 0, torch.minimum(std, iqr), std)
    return (0.9 * spread * num ** (-0.2)).float().reshape(anchors.shape[1:])


def best_fraction(anchors: torch.Tensor, scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The anchors with the highest scores: the top ceil(fraction * A) of anchors [A, ...] by scores [A]."""
    anchors = _as_anchors(anchors)
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.shape != (anchors.shape[0],):
        raise ValueError(f"need one score per anchor: {anchors.shape[0]} anchors, scores of shape {list(scores.shape)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = max(1, math.ceil(fraction * anchors.shape[0]))
    # Stable order: among equal scores the earlier anchor wins, so the choice is reproducible.
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return anchors[order]


class KDESampler:
    """Gaussian KDE over anchors [A, ...]: density (1/A) sum_a N(x; anchor_a, diag(bandwidth^2)).

    bandwidth: "silverman" (per dimension, from the anchors), a float (the same for every dimension,
    in latent units) or a tensor of the anchors' trailing shape; `scale` multiplies it.
    """

    def __init__(self, anchors: torch.Tensor, bandwidth: str | float | torch.Tensor = "silverman", scale: float = 1.0):
        self.anchors = _as_anchors(anchors)
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"the bandwidth scale must be finite and >= 0, got {scale}")
        self.scale = float(scale)
        if isinstance(bandwidth, str):
            if bandwidth != "silverman":
                raise ValueError(f"unknown bandwidth rule {bandwidth!r}; use 'silverman', a float or a tensor")
            bw = silverman_bandwidth(self.anchors)
        else:
            bw = torch.as_tensor(bandwidth, dtype=torch.float32)
            if (bw < 0).any() or not torch.isfinite(bw).all():
                raise ValueError("the bandwidth must be finite and >= 0")
        self.bandwidth = bw.expand(self.anchors.shape[1:]) * self.scale

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw [num_samples, ...] latents: one random anchor per draw plus independent noise per dimension."""
        _check_count(num_samples)
        which = torch.randint(0, self.anchors.shape[0], (num_samples,), generator=generator)
        noise = torch.randn((num_samples, *self.anchors.shape[1:]), generator=generator)
        return self.anchors[which] + noise * self.bandwidth


# METHOD.md §6: GAUSS draws anchors from N(0, 10^2), whatever the zoo's latents look like.
GAUSS_STD = 10.0


class GaussianSampler:
    """An independent Gaussian per dimension: draws mean + std * N(0, 1), mean and std of one
    latent's shape [...]. It ignores how dimensions go together, hence weak."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32).expand(self.mean.shape)
        if not (torch.isfinite(self.std).all() and (self.std >= 0).all()):
            raise ValueError("the Gaussian's std must be finite and >= 0")

    @classmethod
    def published(cls, shape, std: float = GAUSS_STD) -> GaussianSampler:
        """GAUSS as published: N(0, std^2) (std 10) in every dimension of a latent of `shape`."""
        return cls(torch.zeros(tuple(shape)), torch.full(tuple(shape), float(std)))

    @classmethod
    def fit(cls, anchors: torch.Tensor, scale: float = 1.0) -> GaussianSampler:
        """"gauss-fit": mean and std (times `scale`) of each dimension of the anchors [A, ...]
        (std 1 for a single anchor)."""
        anchors = _as_anchors(anchors)
        std = anchors.std(0, unbiased=True) if anchors.shape[0] > 1 else torch.ones(anchors.shape[1:])
        return cls(anchors.mean(0), std * scale)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_count(num_samples)
        return self.mean + self.std * torch.randn((num_samples, *self.mean.shape), generator=generator)


def neighbour_sampler(prompts: torch.Tensor, reference: torch.Tensor | None = None, spread: float = 0.1) -> KDESampler:
    """Sample around prompt latents [P, ...]: each draw is a random prompt plus Gaussian noise whose
    per-dimension std is `spread` times the std of `reference` latents [A, ...] (the zoo's anchors;
    the prompts' own std when None, which needs at least two prompts)."""
    prompts = _as_anchors(prompts)
    ref = prompts if reference is None else _as_anchors(reference)
    if ref.shape[1:] != prompts.shape[1:]:
        raise ValueError(f"prompt latents {list(prompts.shape[1:])} and reference latents {list(ref.shape[1:])} differ in shape")
    if ref.shape[0] < 2:
        raise ValueError("neighbour sampling needs a reference spread: pass the zoo's anchors as reference, or several prompts")
    return KDESampler(prompts, bandwidth=spread * ref.std(0))


def _score(score_fn: ScoreFn, latents: torch.Tensor) -> torch.Tensor:
    scores = torch.as_tensor(score_fn(latents), dtype=torch.float64).reshape(-1)
    if scores.numel() != latents.shape[0]:
        raise ValueError(f"the score function returned {scores.numel()} scores for {latents.shape[0]} latents")
    return scores


def sub_sample(sampler, score_fn: ScoreFn, num_samples: int, num_draws: int, generator: torch.Generator | None = None):
    """SUB: draw `num_draws` latents, score them, keep the best `num_samples`.

    Returns (latents [num_samples, ...], scores [num_samples]), best first.
    """
    _check_count(num_samples)
    if num_draws < num_samples:
        raise ValueError(f"num_draws ({num_draws}) must be at least num_samples ({num_samples})")
    latents = sampler.sample(num_draws, generator)
    scores = _score(score_fn, latents)
    order = torch.sort(scores, descending=True, stable=True).indices[:num_samples]
    return latents[order], scores[order]


def boot_sample(
    sampler: KDESampler,
    score_fn: ScoreFn,
    num_samples: int,
    num_draws: int,
    rounds: int = 2,
    generator: torch.Generator | None = None,
):
    """BOOT: SUB, then refit a KDE on the kept latents, `rounds` times (Silverman's rule on them
    times the sampler's scale; the sampler's own bandwidth when fewer than 3 are kept).

    Returns (latents [num_samples, ...], scores [num_samples]) of the last round, best first.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    latents, scores = sub_sample(sampler, score_fn, num_samples, num_draws, generator)
    for _ in range(rounds - 1):
        if latents.shape[0] > 2:
            sampler = KDESampler(latents, "silverman", sampler.scale)
        else:
            sampler = KDESampler(latents, sampler.bandwidth)
        latents, scores = sub_sample(sampler, score_fn, num_samples, num_draws, generator)
    return latents, scores


METHODS = ("kde", "sub", "boot", "gauss", "gauss-fit", "neighbours", "gan", "diffusion", "sub-gan", "sub-diffusion")


def parse_method(method: str) -> tuple[str, float]:
    """"kde30" -> ("kde", 0.30): a sampling method and the best fraction of the zoo it draws from
    (default 0.3 when no number is given). Methods: kde, sub, boot, gauss (the published N(0, 10^2),
    which uses no anchors), gauss-fit (a Gaussian fitted to the best anchors), neighbours, gan and
    diffusion (trained generative samplers, downstream.generative), sub-gan and sub-diffusion (SUB
    over their draws)."""
    m = re.fullmatch(r"([a-z]+(?:-[a-z]+)?)(\d+)?", str(method).lower())
    if m is None or m.group(1) not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {list(METHODS)}, optionally with a percentage (e.g. 'kde30')")
    pct = int(m.group(2)) if m.group(2) else 30
    if not 0 < pct <= 100:
        raise ValueError(f"the percentage in {method!r} must be in 1..100")
    return m.group(1), pct / 100
