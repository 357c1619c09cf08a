"""Generative samplers in latent space: a GAN and a latent diffusion model over the anchors.

The seed names GANs beside KDE and neighbour sampling for drawing new models from a
hyper-representation; p-diff trains a diffusion model over the latents of an autoencoder of
weights. Here both learn the distribution of the sampling anchors (the latent token sequences
[A, N, L] of a zoo's best models, downstream.generation) and draw new latents [k, N, L] that the
SANE decoder turns into weights, exactly as the KDE's draws are.

A few dozen anchors in N x L (thousands of) dimensions span at most A - 1 directions around their
mean, so both models work in the anchors' principal components (`LatentBasis`: coordinates with unit
variance over the anchors, `rank` of them) and map their draws back: a linear encoder fitted on the
anchors, as p-diff's autoencoder gives its diffusion model a small latent space.

- `GANSampler`: a non-saturating GAN, MLP generator (noise [k, noise_dim] -> coordinates [k, r]) and
  MLP discriminator, with an R1 gradient penalty on real data and a moving average of the generator
  (without them the generator under-spreads: on an 8-D Gaussian mixture spectral normalisation alone
  left per-component variances of 0.2-1.3 instead of 1).
- `DiffusionSampler`: a DDPM (linear beta schedule over `timesteps`) with an MLP denoiser that
  predicts the noise (`prediction` "epsilon", DDPM's choice) or the clean coordinates ("sample");
  draws run DDIM over `sampling_steps` with noise `eta`: 0 (the default) is deterministic (a draw
  depends on its initial noise only), 1 adds the ancestral sampler's fresh noise at every step,
  which corrects some of the denoiser's errors on the way (Song et al. 2021, DDIM's eta). On a few
  dozen anchors the two behave differently: a noise predictor's draws land between anchors (a blur
  of them), a sample predictor's move from the anchors' mean towards copies of them as it trains.

`noise_scale` multiplies the noise a draw starts from (the GAN's input, the diffusion's x_T): below 1
draws stay nearer the anchors' densest region (the truncation trick of GANs), 1 is the trained
distribution; it needs no retraining.

Both are trained by `train_sampler` with Accelerate (an `Accelerator` on the GPU when there is one),
seeded (same anchors, settings and seed -> the same sampler), and draw with a `torch.Generator`
(same generator state -> the same latents); `train_gan_steps` keeps the GAN after each of several
step counts of one run. `sampler.save(folder)` writes
`sampling/{kind}.safetensors` (basis and network) + `sampling/{kind}.json` (settings); `load_sampler`
reads them back, from a folder or a Hub repo. Sampling needs torch only (remote code); training also
needs accelerate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn
from transformers.utils.logging import tqdm  # transformers' tqdm: this file is remote code too

from ..files import atomic_write_bytes, atomic_write_json, resolve_file

KINDS = ("gan", "diffusion")
SAMPLING_DIR = "sampling"
DEFAULTS: dict[str, dict] = {
    "gan": {"rank": None, "noise_dim": 16, "hidden": 128, "depth": 2, "steps": 2000, "batch_size": 64,
            "lr": 3e-4, "noise_scale": 1.0},
    # the denoiser must resolve a few dozen anchors in ~20 components: at width 128 it learnt a blur of
    # them (decoded draws at 0.45 validation accuracy on mnist-seed, 16,000 steps), at 512 0.72
    "diffusion": {"rank": None, "hidden": 512, "depth": 3, "steps": 2000, "batch_size": 64, "lr": 1e-3,
                  "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "sampling_steps": 50,
                  "noise_scale": 1.0, "eta": 0.0, "prediction": "epsilon"},
}
PREDICTIONS = ("epsilon", "sample")  # what the denoiser predicts: the noise, or the clean coordinates
_TIME_FEATURES = 32
R1_GAMMA = 1.0  # the GAN discriminator's gradient penalty on real data
GAN_EMA = 0.99  # the generator kept: a moving average of the trained weights


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown generative sampler {kind!r}; use one of {list(KINDS)}")
    return kind


def check_settings(kind: str, settings: dict | None) -> dict:
    """The defaults of `kind` updated by `settings`; a clear error for unknown or bad values."""
    out = dict(DEFAULTS[check_kind(kind)])
    unknown = set(settings or {}) - set(out)
    if unknown:
        raise ValueError(f"unknown {kind} settings {sorted(unknown)}; it takes {sorted(out)}")
    out.update(settings or {})
    for name, value in out.items():
        if name == "rank" and value is None:
            continue
        if name == "noise_scale":
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
                raise ValueError(f"{kind} setting noise_scale must be a finite number > 0, got {value!r}")
        elif name == "prediction":
            if value not in PREDICTIONS:
                raise ValueError(f"{kind} setting prediction must be one of {list(PREDICTIONS)} (the noise or the "
                                 f"clean coordinates), got {value!r}")
        elif name == "eta":
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
                raise ValueError(f"{kind} setting eta must be a number in [0, 1] (0: deterministic DDIM, 1: "
                                 f"ancestral noise), got {value!r}")
        elif name in ("lr", "beta_start", "beta_end"):
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise ValueError(f"{kind} setting {name} must be in (0, 1), got {value!r}")
        elif not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{kind} setting {name} must be a positive integer, got {value!r}")
    if kind == "diffusion" and out["sampling_steps"] > out["timesteps"]:
        raise ValueError(f"sampling_steps ({out['sampling_steps']}) cannot exceed timesteps ({out['timesteps']})")
    return out


# ------------------------------------------------------------------------------------- the basis
class LatentBasis(nn.Module):
    """The anchors' principal components: latents [k, *shape] <-> coordinates [k, r].

    mean [D], components [r, D] (orthonormal rows), scale [r] (the anchors' std along each), so the
    anchors' coordinates have mean 0 and variance 1 per component. `fit` keeps the `rank` leading
    components (all with non-zero variance, at most A - 1, when None).
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor, shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("mean", mean.float().reshape(-1))
        self.register_buffer("components", components.float().contiguous())
        self.register_buffer("scale", scale.float())

    @classmethod
    def fit(cls, anchors: torch.Tensor, rank: int | None = None) -> LatentBasis:
        anchors = torch.as_tensor(anchors)
        if anchors.dim() < 2 or anchors.shape[0] < 2:
            raise ValueError(f"a generative sampler learns from at least 2 anchors [A, ...], got shape {list(anchors.shape)}")
        if not torch.isfinite(anchors).all():
            raise ValueError("anchors hold NaN or infinite values")
        flat = anchors.flatten(1).double()
        mean = flat.mean(0)
        _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        keep = int((s > s[0] * 1e-6).sum()) if s[0] > 0 else 0
        if keep == 0:
            raise ValueError("all anchors are identical: there is no spread for a generative sampler to learn")
        keep = min(keep, rank) if rank is not None else keep
        scale = s[:keep] / math.sqrt(flat.shape[0] - 1)
        return cls(mean, vh[:keep], scale, anchors.shape[1:])

    @property
    def rank(self) -> int:
        return int(self.scale.numel())

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [k, *shape] -> coordinates [k, r]."""
        return ((latents.flatten(1).float() - self.mean) @ self.components.T) / self.scale

    def decode(self, coords: torch.Tensor) -> torch.Tensor:
        """coordinates [k, r] -> latents [k, *shape]."""
        return ((coords.float() * self.scale) @ self.components + self.mean).reshape(-1, *self.shape)


def _mlp(width_in: int, hidden: int, depth: int, width_out: int, wrap=lambda layer: layer) -> nn.Sequential:
    layers, width = [], width_in
    for _ in range(depth):
        layers += [wrap(nn.Linear(width, hidden)), nn.SiLU()]
        width = hidden
    layers.append(wrap(nn.Linear(width, width_out)))
    return nn.Sequential(*layers)


def _time_features(t: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Sinusoidal features [k, 32] of integer diffusion steps t [k]."""
    half = _TIME_FEATURES // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float() / timesteps)[:, None] * 1000.0 * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """The diffusion model's network: (noisy coordinates [k, r], steps [k]) -> predicted noise or clean
    coordinates [k, r] (the sampler's `prediction`)."""

    def __init__(self, rank: int, hidden: int, depth: int, timesteps: int):
        super().__init__()
        self.timesteps = timesteps
        self.net = _mlp(rank + _TIME_FEATURES, hidden, depth, rank)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, _time_features(t, self.timesteps)], dim=1))


# ------------------------------------------------------------------------------------ samplers
class GenerativeSampler(nn.Module):
    """A trained generative sampler over anchor latents: `sample(k, generator)` -> latents [k, *shape].

    config: {"kind", "settings", "seed", "fraction" (the best fraction of the anchors it learnt from),
    "num_anchors", "rank", "shape", and what chose its settings}.
    """

    kind = ""

    def __init__(self, basis: LatentBasis, net: nn.Module, config: dict):
        super().__init__()
        self.basis, self.net, self.config = basis, net.eval(), config

    @property
    def settings(self) -> dict:
        return self.config["settings"]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}; ask for at least one sample")
        with torch.no_grad():
            return self.basis.decode(self._coords(num_samples, generator))

    def _coords(self, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def save(self, folder: str | os.PathLike) -> Path:
        """Write sampling/{kind}.safetensors + sampling/{kind}.json into `folder`."""
        base = Path(folder) / SAMPLING_DIR
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(base / f"{self.kind}.safetensors", save(tensors))
        atomic_write_json(base / f"{self.kind}.json", self.config)
        return base

    @classmethod
    def build(cls, basis: LatentBasis, settings: dict) -> nn.Module:
        raise NotImplementedError


class GANSampler(GenerativeSampler):
    """Draws G(z), z ~ N(0, I) [k, noise_dim], mapped from component coordinates to latents."""

    kind = "gan"

    @classmethod
    def build(cls, basis: LatentBasis, settings: dict) -> nn.Module:
        return _mlp(settings["noise_dim"], settings["hidden"], settings["depth"], basis.rank)

    def _coords(self, num_samples, generator):
        z = torch.randn((num_samples, self.settings["noise_dim"]), generator=generator)
        return self.net(z * self.settings["noise_scale"])


def _alpha_bars(settings: dict) -> torch.Tensor:
    betas = torch.linspace(settings["beta_start"], settings["beta_end"], settings["timesteps"], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


class DiffusionSampler(GenerativeSampler):
    """DDIM from x_T ~ N(0, I) [k, r] over `sampling_steps` of the trained DDPM's steps, with fresh
    noise of `eta` times the ancestral sampler's at each step (0: deterministic); predicted clean
    coordinates are clipped to the anchors' range (buffer `clip`, 1.2 x the largest)."""

    kind = "diffusion"

    def __init__(self, basis: LatentBasis, net: nn.Module, config: dict, clip: torch.Tensor | float = 10.0):
        super().__init__(basis, net, config)
        self.register_buffer("clip", torch.as_tensor(clip, dtype=torch.float32).reshape(()))

    @classmethod
    def build(cls, basis: LatentBasis, settings: dict) -> nn.Module:
        return Denoiser(basis.rank, settings["hidden"], settings["depth"], settings["timesteps"])

    def _coords(self, num_samples, generator):
        s = self.settings
        alpha_bar = _alpha_bars(s)
        steps = torch.linspace(s["timesteps"] - 1, 0, s["sampling_steps"]).round().long().unique_consecutive()
        x = torch.randn((num_samples, self.basis.rank), generator=generator) * s["noise_scale"]
        for i, t in enumerate(steps):
            a = alpha_bar[t]
            a_prev = alpha_bar[steps[i + 1]] if i + 1 < len(steps) else torch.tensor(1.0)
            out = self.net(x, t.expand(num_samples))
            x0 = out if s["prediction"] == "sample" else (x - (1 - a).sqrt() * out) / a.sqrt()
            x0 = x0.clamp(-self.clip, self.clip)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            sigma = s["eta"] * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if s["eta"] > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator)
        return x


SAMPLERS: dict[str, type[GenerativeSampler]] = {"gan": GANSampler, "diffusion": DiffusionSampler}


# ------------------------------------------------------------------------------------ training
def _accelerator():
    try:
        from accelerate import Accelerator, PartialState
        from accelerate.state import AcceleratorState
    except ImportError as err:  # remote code: sampling needs torch only, training needs accelerate
        raise ImportError("training a GAN or diffusion sampler needs accelerate (pip install hyperrep_hf); "
                          "sampling from a trained one does not") from err
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != "no" and PartialState().num_processes == 1:
        # accelerate keeps one precision per process; these small networks train in float32
        AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")


def train_sampler(anchors: torch.Tensor, kind: str, settings: dict | None = None, seed: int = 0,
                  progress: bool = False, config: dict | None = None) -> GenerativeSampler:
    """Train a `kind` ("gan" or "diffusion") sampler on anchor latents [A, ...] with `settings`
    (see DEFAULTS; rank None = every component of the anchors). Seeded: the same anchors, settings
    and seed give the same sampler. `config` adds entries to the sampler's config (e.g. fraction)."""
    settings = check_settings(kind, settings)
    return _train(anchors, kind, settings, seed, progress, config, [settings["steps"]])[settings["steps"]]


def train_gan_steps(anchors: torch.Tensor, steps: Sequence[int], settings: dict | None = None, seed: int = 0,
                    progress: bool = False, config: dict | None = None) -> dict[int, GANSampler]:
    """The GAN after each of `steps` of one training run on anchor latents [A, ...]: {n: sampler}.
    A GAN's training has no schedule tied to its length, so the sampler after n steps of a longer
    run is exactly `train_sampler(anchors, "gan", {**settings, "steps": n}, seed)`, at the cost of
    one run to max(steps)."""
    steps = sorted({int(n) for n in steps})
    if not steps or steps[0] <= 0:
        raise ValueError(f"steps must be positive integers, got {steps}")
    settings = check_settings("gan", {**(settings or {}), "steps": steps[-1]})
    return _train(anchors, "gan", settings, seed, progress, config, steps)


def _train(anchors, kind: str, settings: dict, seed: int, progress: bool, config: dict | None,
           keep: Sequence[int]) -> dict[int, GenerativeSampler]:
    """{n: the sampler after n training steps} for n in `keep` (a diffusion run keeps its last step only:
    its learning-rate schedule depends on the run's length)."""
    anchors = torch.as_tensor(anchors).float()
    basis = LatentBasis.fit(anchors, settings["rank"])
    data = basis.encode(anchors)
    accelerator = _accelerator()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        generator = torch.Generator().manual_seed(int(seed))
        if kind == "gan":
            nets = _train_gan(accelerator, basis, data, settings, generator, progress, keep)
        else:
            nets = {settings["steps"]: _train_diffusion(accelerator, basis, data, settings, generator, progress)}
    samplers = {}
    for n, net in nets.items():
        info = {**(config or {}), "kind": kind, "settings": {**settings, "steps": n}, "seed": int(seed),
                "num_anchors": int(len(anchors)), "rank": basis.rank, "shape": list(basis.shape)}
        sampler = GANSampler(basis, net, info) if kind == "gan" else DiffusionSampler(basis, net, info, 1.2 * float(data.abs().max()))
        samplers[n] = sampler.cpu().eval()
    return samplers


def _batches(data: torch.Tensor, settings: dict, generator: torch.Generator, progress: bool, desc: str):
    size = min(settings["batch_size"], len(data))
    for _ in tqdm(range(settings["steps"]), desc=desc, disable=not progress, leave=False):
        yield data[torch.randint(0, len(data), (size,), generator=generator)]


def _train_gan(accelerator, basis, data, settings, generator, progress, keep: Sequence[int]) -> dict[int, nn.Module]:
    """Non-saturating GAN loss with an R1 penalty on real data (gamma 1); Adam (0.5, 0.9); the
    generators returned, {step: network} after each step in `keep`, are the exponential moving
    average (0.99) of the trained one's weights."""
    import copy

    import torch.nn.functional as F

    gen = GANSampler.build(basis, settings)
    average = copy.deepcopy(gen).requires_grad_(False)
    disc = _mlp(basis.rank, settings["hidden"], settings["depth"], 1)
    opt_g = torch.optim.Adam(gen.parameters(), lr=settings["lr"], betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=settings["lr"], betas=(0.5, 0.9))
    gen, disc, opt_g, opt_d = accelerator.prepare(gen, disc, opt_g, opt_d)
    average = average.to(accelerator.device)
    kept = {}
    for step, real in enumerate(_batches(data, settings, generator, progress, "GAN"), start=1):
        real = real.to(accelerator.device).requires_grad_(True)
        z = torch.randn((len(real), settings["noise_dim"]), generator=generator).to(accelerator.device)
        fake = gen(z)
        on_real = disc(real)
        (grad,) = torch.autograd.grad(on_real.sum(), real, create_graph=True)
        loss_d = (F.softplus(-on_real).mean() + F.softplus(disc(fake.detach())).mean()
                  + R1_GAMMA / 2 * grad.pow(2).sum(1).mean())
        opt_d.zero_grad()
        accelerator.backward(loss_d)
        opt_d.step()
        loss_g = F.softplus(-disc(fake)).mean()
        opt_g.zero_grad()
        accelerator.backward(loss_g)
        opt_g.step()
        with torch.no_grad():
            for avg, p in zip(average.parameters(), accelerator.unwrap_model(gen).parameters()):
                avg.lerp_(p, 1 - GAN_EMA)
        if step in keep:
            kept[step] = copy.deepcopy(average).cpu()
    return kept


def _train_diffusion(accelerator, basis, data, settings, generator, progress) -> nn.Module:
    """DDPM: the MSE of the predicted noise (or clean coordinates) at uniformly drawn steps; Adam with
    a cosine decay of the rate."""
    net = DiffusionSampler.build(basis, settings)
    opt = torch.optim.Adam(net.parameters(), lr=settings["lr"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings["steps"])
    net, opt, schedule = accelerator.prepare(net, opt, schedule)
    device = accelerator.device
    alpha_bar = _alpha_bars(settings)
    for x0 in _batches(data, settings, generator, progress, "diffusion"):
        t = torch.randint(0, settings["timesteps"], (len(x0),), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        a = alpha_bar[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        target = x0 if settings["prediction"] == "sample" else eps
        loss = (net(xt.to(device), t.to(device)) - target.to(device)).pow(2).mean()
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
        schedule.step()
    return accelerator.unwrap_model(net).cpu()


# ------------------------------------------------------------------------------------ loading
def load_sampler(folder_or_repo: str | os.PathLike, kind: str, missing_hint: str,
                 revision: str | None = None) -> GenerativeSampler:
    """The `kind` sampler saved in a checkpoint folder or Hub repo (at `revision`);
    FileNotFoundError naming `missing_hint` (what trains it) when it has none."""
    check_kind(kind)
    config = json.loads(Path(resolve_file(folder_or_repo, f"{SAMPLING_DIR}/{kind}.json", missing_hint, revision)).read_text())
    tensors = load_file(resolve_file(folder_or_repo, f"{SAMPLING_DIR}/{kind}.safetensors", missing_hint, revision))
    rank, shape = int(config["rank"]), config["shape"]
    dim = math.prod(shape)
    basis = LatentBasis(torch.zeros(dim), torch.zeros(rank, dim), torch.ones(rank), shape)
    cls = SAMPLERS[kind]
    config["settings"] = check_settings(kind, config["settings"])  # files from before a setting existed: its default
    sampler = cls(basis, cls.build(basis, config["settings"]), config)
    sampler.load_state_dict(tensors)
    return sampler.eval()


__all__ = ["DEFAULTS", "KINDS", "DiffusionSampler", "GANSampler", "GenerativeSampler", "LatentBasis",
           "load_sampler", "train_sampler"]
