"""Generating new models from a trained SANE checkpoint (METHOD.md §6).

Two steps:

1. `prepare_sampling(checkpoint, zoo)` embeds the zoo's models (full token sequences of latents),
   and stores them as sampling anchors with their validation accuracy, plus what a sampled model
   needs to become a working nn.Module (architecture, its arguments, weight layout, task name), in
   the checkpoint folder: `sampling/anchors.safetensors` + `sampling/sampling.json`, with the KDE
   bandwidth scale chosen on the task's validation split (`choose_bandwidth_scale`), so sampling
   later needs no task data for it. (`hyperrep sample --prepare` runs it.)
2. Optionally `train_generative_sampler(generator, "gan" | "diffusion")` trains a GAN or a latent
   diffusion model on the best anchors (downstream.generative), its settings chosen on validation
   accuracy of decoded draws, saved beside the anchors (`sampling/gan.*`, `sampling/diffusion.*`;
   `hyperrep sample --train-samplers gan diffusion` runs it).
3. `ModelGenerator` draws latents (KDE on the best anchors, SUB, BOOT, GAUSS, a fitted Gaussian,
   neighbours of prompt models, the GAN / diffusion samplers and SUB over them), decodes them with the SANE decoder and the tokenizer's de-standardisation, builds the
   models and re-estimates BatchNorm statistics on task data (no weight update).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from ..files import atomic_write_bytes, atomic_write_json, resolve_file
from ..layout import WeightLayout
from .embedding import decode_flat, encode, encode_flat
from .generative import KINDS as GENERATIVE_KINDS
from .generative import PREDICTIONS as GENERATIVE_PREDICTIONS
from .generative import GenerativeSampler, load_sampler, train_gan_steps, train_sampler
from .samplers import (
    GaussianSampler,
    KDESampler,
    best_fraction,
    boot_sample,
    neighbour_sampler,
    parse_method,
    sub_sample,
)

SAMPLING_DIR = "sampling"
# The KDE bandwidth is Silverman's per-dimension rule times a scale. The full rule is made for one
# dimension: over a whole model's latents (dozens of tokens x latent_dim) its independent noise adds
# up far beyond the gaps between anchors and the decoded models can break, so the scale is chosen
# per checkpoint (bandwidth_scale="auto", the default): the grid value whose KDE draws, decoded,
# score best on the task's VALIDATION split (`choose_bandwidth_scale`; ties go to the larger scale,
# which gives more distinct models). The test split never enters the choice.
BANDWIDTH_SCALES: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
# What the choice draws: KDE samples of the default method (kde30) with a fixed seed, per grid value.
BANDWIDTH_CHOICE_SAMPLES = 8
BANDWIDTH_CHOICE_FRACTION = 0.3
# The GAN / diffusion settings chosen on validation, as the bandwidth scale: training steps x the
# noise scale a draw starts from (1 = the learnt distribution, 0.5 = nearer its densest region).
# The GAN's steps are snapshots of one run (`train_gan_steps`), so a fine grid costs one run: on the
# demo zoo's validation draws a GAN went from not yet learnt (5,000 steps: accuracy 0.46, distance to
# its anchors 0.33) to copying them (6,000: 0.93, 0.011) within 1,000 steps, and only a finer grid
# finds the steps in between (5,500: 0.92 at 0.040); a 100-step grid finds more of them (README,
# issue 20). Each diffusion setting is a run of its own; a denoiser that predicts the clean sample
# moves, as it trains, from the anchors' mean through spread draws to copies (6,000 steps on the
# digits seed zoo: 0.87 at distance 0.07; 8,000: 0.92 at 0.013), hence 2,000-step spacing.
GENERATIVE_STEPS: dict[str, tuple[int, ...]] = {"gan": tuple(range(1000, 8001, 100)), "diffusion": (2000, 4000, 6000, 8000)}
GENERATIVE_NOISE_SCALES: tuple[float, ...] = (0.5, 1.0)
GENERATIVE_ETAS: tuple[float, ...] = (0.0, 1.0)  # diffusion draws: deterministic DDIM, or with ancestral noise
# and GENERATIVE_PREDICTIONS: a diffusion grid tries a noise and a sample predictor
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def load_checkpoint(folder_or_repo, device: str | torch.device = "cpu", revision: str | None = None):
    """(SaneModel in eval mode on `device`, WeightTokenizer) from a checkpoint folder or Hub repo id
    (at `revision`: a branch, tag or commit)."""
    from ..modeling_sane import SaneModel
    from ..tokenization_weights import WeightTokenizer

    model = SaneModel.from_pretrained(str(folder_or_repo), revision=revision).eval().to(device)
    tokenizer = WeightTokenizer.from_pretrained(str(folder_or_repo), revision=revision)
    return model, tokenizer


def checkpoint_revision(model) -> str | None:
    """The commit a SANE model was loaded from (None for a local folder), so files read beside it
    (probes, anchors) come from the same snapshot."""
    return getattr(model, "commit_hash", None)


def find_layout(tokenizer, layout: WeightLayout, what: str = "the zoo") -> int:
    """Index of the tokenizer's token layout for a WeightLayout; a clear error when it has none."""
    for i, tl in enumerate(tokenizer.layouts):
        if tl.weights == layout or tl.same_architecture(layout):
            return i
    known = [f"{len(tl.weights)} tensors / {tl.weights.num_weights} weights" for tl in tokenizer.layouts]
    raise ValueError(
        f"the checkpoint's tokenizer cannot encode {what} ({len(layout)} tensors / {layout.num_weights} weights); "
        f"it knows {known or 'no layout'}. Use a checkpoint trained on a zoo of this architecture."
    )


# ---------------------------------------------------------------------------------------- anchors
@dataclass
class SamplingAnchors:
    """Anchor latents [A, N, latent_dim] of zoo models, their scores [A] (validation accuracy) and
    `info`: architecture, architecture_kwargs, layout, task, score column, zoo, split, epochs;
    `samplers`: the GAN / diffusion samplers trained on them ({"gan": GANSampler, ...}, saved and
    loaded with them; `info["generative"]` lists them)."""

    latents: torch.Tensor
    scores: torch.Tensor
    info: dict = field(default_factory=dict)
    samplers: dict[str, GenerativeSampler] = field(default_factory=dict)

    @property
    def layout(self) -> WeightLayout:
        return WeightLayout.from_dict(self.info["layout"])

    def save(self, folder: str | os.PathLike) -> Path:
        base = Path(folder) / SAMPLING_DIR
        atomic_write_bytes(base / "anchors.safetensors", save({"latents": self.latents.float().contiguous(), "scores": self.scores.double().contiguous()}))
        for sampler in self.samplers.values():
            sampler.save(folder)
        # sampling.json last: it names the samplers only once their files are complete
        self.info.pop("generative", None)
        if self.samplers:
            self.info["generative"] = sorted(self.samplers)
        atomic_write_json(base / "sampling.json", self.info)
        return base

    @classmethod
    def load(cls, folder_or_repo: str | os.PathLike, revision: str | None = None) -> SamplingAnchors:
        """The anchors saved with `save` in a checkpoint folder or a Hub repo id (at `revision`)."""
        hint = f"store anchors first: `hyperrep sample --checkpoint {folder_or_repo} --zoo ZOO --prepare`"
        info = json.loads(Path(resolve_file(folder_or_repo, f"{SAMPLING_DIR}/sampling.json", hint, revision)).read_text())
        tensors = load_file(resolve_file(folder_or_repo, f"{SAMPLING_DIR}/anchors.safetensors", hint, revision))
        samplers = {kind: load_sampler(folder_or_repo, kind, train_hint(folder_or_repo, kind), revision)
                    for kind in info.get("generative", [])}
        return cls(tensors["latents"], tensors["scores"], info, samplers)


def train_hint(checkpoint, kind: str) -> str:
    """What trains a generative sampler of a checkpoint: the command to run."""
    return (f"train it on the checkpoint's anchors with `hyperrep sample --checkpoint {checkpoint} --train-samplers "
            f"{kind}` (downstream.generation.train_generative_sampler)")


def prepare_sampling(
    checkpoint: str | os.PathLike,
    zoo,
    split: str = "train",
    epochs: Sequence[int] | None = None,
    score: str = "val_acc",
    model=None,
    tokenizer=None,
    batch_size: int = 64,
    save_to: str | os.PathLike | None = None,
    progress: bool = True,
    bandwidth_scale: float | str | None = "auto",
    task=None,
) -> SamplingAnchors:
    """Embed a zoo's models as sampling anchors and save them into the checkpoint folder.

    zoo: a loaded `Zoo` (hyperrep_hf.zoo.load_zoo). Rows of `split` at `epochs` (default: the last
    epoch of the split) that did not diverge become anchors, scored by the `score` column
    (validation accuracy by default: choosing by test accuracy would leak the test split).
    Returns the anchors; writes them under `save_to` (default: the checkpoint folder).

    In a zoo whose models differ in an architecture argument (activation, dropout of a
    hyperparameter zoo), the same weights make a different function under another activation, so
    only anchors built like the best-scoring one are kept; `info["architecture_kwargs"]` records it.

    bandwidth_scale: "auto" (default) chooses the KDE bandwidth scale on the validation split of
    `task` (a TaskData or task name; default the zoo's task) and stores it with the choice's
    figures in `info["bandwidth_scale"]` / `info["bandwidth_choice"]`; a number is stored as given;
    None stores none (a ModelGenerator then chooses when it first samples).
    """
    if model is None or tokenizer is None:
        model, tokenizer = load_checkpoint(checkpoint)
    layout_id = find_layout(tokenizer, zoo.layout)
    meta = zoo.metadata(split)
    if score not in meta.columns:
        raise ValueError(f"the zoo has no column {score!r} to score anchors by; columns: {list(meta.columns)}")
    chosen_epochs = [int(meta["epoch"].max())] if epochs is None else [int(e) for e in epochs]
    keep = meta["epoch"].isin(chosen_epochs).to_numpy().copy()
    # Real zoos hold diverged checkpoints (NaN / inf weights) and unscored ones; each is left out and counted.
    reasons = {"diverged": ~meta["diverged"].fillna(False).astype(bool).to_numpy() if "diverged" in meta.columns else keep,
               "non-finite weights": torch.isfinite(zoo.weights(split)).all(1).numpy(),
               f"missing {score}": np.isfinite(meta[score].to_numpy(dtype=np.float64))}
    left_out = {}
    for reason, ok in reasons.items():
        if (keep & ~ok).any():
            left_out[reason] = int((keep & ~ok).sum())
        keep &= ok
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise ValueError(f"no usable rows in split {split!r} at epochs {chosen_epochs}; pick other --epochs")
    from ..zoo.architectures import architecture_kwargs_for_row

    kwargs = [architecture_kwargs_for_row(zoo.architecture, zoo.architecture_kwargs, meta.iloc[r].to_dict()) for r in rows]
    best_kwargs = kwargs[int(np.argmax(meta[score].to_numpy(dtype=np.float64)[rows]))]
    rows = np.asarray([r for r, kw in zip(rows, kwargs) if kw == best_kwargs])
    weights = zoo.weights(split)[torch.as_tensor(rows)]
    latents = encode_flat(model, tokenizer, weights, layout_id=layout_id, batch_size=batch_size, progress=progress)
    info = {
        "architecture": zoo.architecture,
        "architecture_kwargs": best_kwargs,
        "layout": zoo.layout.to_dict(),
        "task": zoo.task,
        "zoo": str(getattr(zoo, "path", "")),
        "split": split,
        "epochs": chosen_epochs,
        "score": score,
        "model_ids": meta["model_id"].to_numpy()[rows].tolist(),
        "num_anchors": len(rows),
        "left_out": left_out,
    }
    anchors = SamplingAnchors(latents, torch.as_tensor(meta[score].to_numpy(dtype=np.float64)[rows]), info)
    if bandwidth_scale == "auto":
        ModelGenerator(model, tokenizer, anchors, task if task is not None else zoo.task).bandwidth_scale()
    elif bandwidth_scale is not None:
        info["bandwidth_scale"] = check_bandwidth_scale(bandwidth_scale)
        info["bandwidth_choice"] = {"given": True}
    anchors.save(save_to or checkpoint)
    return anchors


def check_bandwidth_scale(scale) -> float | str:
    """"auto" or a finite number >= 0 (the bandwidth scale); a clear error otherwise."""
    if scale == "auto":
        return scale
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(scale, bool) or not (np.isfinite(value) and value >= 0):
        raise ValueError(f"bandwidth_scale must be 'auto' or a finite number >= 0, got {scale!r}")
    return value


# ------------------------------------------------------------------------------------ BatchNorm
def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) for m in model.modules())


@torch.no_grad()
def condition_batchnorm(model: nn.Module, inputs: torch.Tensor, num_batches: int = 200, batch_size: int = 64,
                        generator: torch.Generator | None = None) -> nn.Module:
    """Re-estimate BatchNorm running statistics of a decoded model: forward passes over random
    batches of `inputs` [n, ...] with only the BatchNorm layers in train mode; no weight changes.

    Running statistics are reset and averaged over all batches (momentum None = cumulative mean),
    so the result does not depend on the decoded (noisy) statistics. Dropout stays off, so the
    statistics match what the model sees at evaluation. Returns the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    if not bns:
        return model.eval()
    model.eval()
    saved = []
    for bn in bns:
        saved.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    device = next(model.parameters()).device
    n = len(inputs)
    for _ in range(num_batches):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        model(inputs[idx].to(device))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    return model.eval()


# ------------------------------------------------------------------------------------ generator
class ModelGenerator:
    """Draw new models from a SANE checkpoint and its stored anchors.

        gen = ModelGenerator.from_pretrained("checkpoints/sane-digits")
        samples = gen.generate(num_samples=5, method="kde30", seed=0)
        samples[0]["model"](x)           # a ready nn.Module of the zoo's architecture

    task: TaskData for BatchNorm conditioning and SUB/BOOT scoring (default: the zoo's task,
    loaded by name when first needed).
    """

    def __init__(self, model, tokenizer, anchors: SamplingAnchors, task=None):
        self.model, self.tokenizer, self.anchors = model.eval(), tokenizer, anchors
        self.layout = anchors.layout
        self.layout_id = find_layout(tokenizer, self.layout, f"the {anchors.info.get('architecture')} models of the anchors")
        self._task = task

    @classmethod
    def from_pretrained(cls, folder_or_repo, task=None, device: str | torch.device = "cpu",
                        revision: str | None = None) -> ModelGenerator:
        model, tokenizer = load_checkpoint(folder_or_repo, device, revision)
        anchors = SamplingAnchors.load(folder_or_repo, checkpoint_revision(model))
        return cls(model, tokenizer, anchors, task)

    @property
    def task(self):
        if self._task is None or isinstance(self._task, (str, dict)):  # a name or a task mapping (zoo.tasks)
            name = self._task or self.anchors.info.get("task")
            if not name:
                raise ValueError("the anchors name no task; pass task=load_task(NAME) for BatchNorm conditioning and SUB scoring")
            try:
                from ..zoo.tasks import load_task
            except ImportError as err:  # remote code without hyperrep_hf
                raise ImportError(f"loading the task {name!r} (BatchNorm conditioning, SUB / BOOT scoring) needs "
                                  "hyperrep_hf installed; without it use condition_bn=False and kde / gauss / "
                                  "neighbours sampling") from err
            self._task = load_task(name)
        return self._task

    @task.setter
    def task(self, task) -> None:
        """A TaskData or task name (loaded when first needed)."""
        self._task = task

    # -- latents --
    def prompt_latents(self, prompts) -> torch.Tensor:
        """Prompt models (nn.Modules / state_dicts / flat vectors [P] or a tensor [n, P]) -> latents [n, N, L].
        State_dicts match the anchors' layout by structure (WeightLayout.match), whatever their names."""
        if torch.is_tensor(prompts) and prompts.dim() == 2:
            flat = prompts.float()
        else:
            items = prompts if isinstance(prompts, (list, tuple)) else [prompts]
            rows = []
            for p in items:
                if isinstance(p, nn.Module):
                    p = p.state_dict()
                rows.append(torch.as_tensor(p).float() if not isinstance(p, dict) else self.layout.flatten(self.layout.match(p)))
            flat = torch.stack(rows)
        if flat.shape[1] != self.layout.num_weights:
            raise ValueError(f"prompt models must be {self.anchors.info.get('architecture')} models with "
                             f"{self.layout.num_weights} weights, got {flat.shape[1]}")
        return encode(self.model, self.tokenizer.tokenize_flat(flat, layout_id=self.layout_id)).cpu()

    def bandwidth_scale(self, scale: float | str = "auto") -> float:
        """The KDE bandwidth scale to sample with: `scale` when a number; for "auto" the scale stored
        with the anchors (`info["bandwidth_scale"]`), else chosen now on the task's validation split
        by `choose_bandwidth_scale` (once per generator: recorded in the anchors' info)."""
        scale = check_bandwidth_scale(scale)
        if scale != "auto":
            return scale
        if "bandwidth_scale" not in self.anchors.info:
            try:
                self.anchors.info.update(choose_bandwidth_scale(self))
            except ImportError as err:  # remote code without hyperrep_hf: no task data to choose on
                raise ImportError("these anchors store no bandwidth scale, and choosing one on validation data needs "
                                  "hyperrep_hf installed; pass bandwidth_scale=0.25 (or store anchors with "
                                  "`hyperrep sample --prepare`)") from err
        return float(self.anchors.info["bandwidth_scale"])

    def sampler(self, method: str = "kde30", prompts=None, bandwidth="silverman",
                bandwidth_scale: float | str = "auto", spread: float = 0.1):
        """The latent sampler of a method: (kind, sampler). "kdeNN", "subNN", "bootNN" fit a KDE on the
        best NN% anchors (bandwidth x bandwidth_scale; "auto": see `bandwidth_scale`); "gauss" is
        the published N(0, 10^2) per latent dimension (anchors unused); "gauss-fitNN" a per-dimension
        Gaussian fitted to the best NN% anchors; "neighbours" a KDE around the prompts; "gan" /
        "diffusion" (and "sub-gan" / "sub-diffusion") the trained generative sampler
        (`generative_sampler`)."""
        kind, fraction = parse_method(method)
        if kind == "neighbours":
            if prompts is None:
                raise ValueError("method 'neighbours' samples around prompt models: pass prompts=[model, ...]")
            return kind, neighbour_sampler(self.prompt_latents(prompts), self.anchors.latents, spread)
        if kind == "gauss":
            return kind, GaussianSampler.published(self.anchors.latents.shape[1:])
        if kind.removeprefix("sub-") in GENERATIVE_KINDS:
            explicit = re.search(r"\d+$", str(method))
            return kind, self.generative_sampler(kind.removeprefix("sub-"), fraction if explicit else None)
        best = best_fraction(self.anchors.latents, self.anchors.scores, fraction)
        if kind == "gauss-fit":
            return kind, GaussianSampler.fit(best)
        return kind, KDESampler(best, bandwidth, self.bandwidth_scale(bandwidth_scale))

    def generative_sampler(self, kind: str, fraction: float | None = None) -> GenerativeSampler:
        """The GAN or diffusion sampler trained on these anchors; a clear error naming the command
        that trains it when there is none, or when it learnt from another fraction of the anchors."""
        sampler = self.anchors.samplers.get(kind)
        checkpoint = getattr(self.model, "name_or_path", None) or "CHECKPOINT"
        if sampler is None:
            raise ValueError(f"this checkpoint has no trained {kind} sampler; {train_hint(checkpoint, kind)}")
        if list(sampler.config["shape"]) != list(self.anchors.latents.shape[1:]):
            raise ValueError(f"the {kind} sampler was trained on latents of shape {sampler.config['shape']}, the anchors "
                             f"are {list(self.anchors.latents.shape[1:])}; {train_hint(checkpoint, kind)}")
        trained = float(sampler.config["fraction"])
        if fraction is not None and abs(fraction - trained) > 1e-9:
            raise ValueError(f"the {kind} sampler learnt from the best {trained:.0%} of the anchors, not {fraction:.0%}: "
                             f"ask for {kind!r} (or {kind}{round(trained * 100)}), or retrain with --sampler-fraction "
                             f"{fraction:g}")
        return sampler

    # -- latents -> models --
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [k, N, L] -> flat weights [k, P] (de-standardised)."""
        return decode_flat(self.model, self.tokenizer, latents, layout_id=self.layout_id)

    @property
    def buildable(self) -> bool:
        """Whether the anchors' architecture has a builder here (registered, or shipped with the
        checkpoint's code); otherwise samples come back as state_dicts only."""
        from ..zoo.architectures import ARCHITECTURES  # here: the zoo package imports datasets

        return self.anchors.info.get("architecture") in ARCHITECTURES

    def build(self, flat: torch.Tensor, condition_bn: bool = True, generator: torch.Generator | None = None) -> list[nn.Module]:
        """flat weights [k, P] -> k models of the anchors' architecture in eval mode (BatchNorm
        statistics re-estimated on the task's training inputs when the model has BatchNorm)."""
        from ..zoo.architectures import build_model

        name = self.anchors.info.get("architecture")
        if not self.buildable:
            raise ValueError(f"no builder for the anchors' architecture {name!r}: register it with "
                             "hyperrep_hf.zoo.register_architecture, or use the samples' state_dicts")
        models = []
        start = None if generator is None else generator.get_state()
        for row in flat:
            m = build_model(name, **self.anchors.info.get("architecture_kwargs", {}))
            missing, unexpected = m.load_state_dict(self.layout.unflatten(row), strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing or unexpected:
                raise ValueError(f"decoded weights do not fit {name}: missing {missing}, unexpected {unexpected}")
            if condition_bn and has_batchnorm(m):
                try:
                    inputs = self.task.train_x
                except ImportError as err:  # remote code without hyperrep_hf: keep the decoded statistics
                    warnings.warn(f"{err}; BatchNorm statistics are the decoded ones", stacklevel=2)
                    condition_bn = False
                else:
                    # every model sees the same batches: its statistics depend on its weights and the
                    # seed only, so SUB / BOOT return the very models they scored
                    if start is not None:
                        generator.set_state(start)
                    condition_batchnorm(m, inputs, generator=generator)
            models.append(m.eval())
        return models

    def score(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Validation accuracy [k] of the models decoded from latents [k, N, L] (for SUB / BOOT)."""
        try:
            from ..zoo.population import evaluate_accuracy
        except ImportError as err:  # remote code without hyperrep_hf
            raise ImportError("SUB / BOOT score decoded models on the task's validation data, which needs "
                              "hyperrep_hf installed; use kde30, gauss or neighbours") from err
        models = self.build(self.decode(latents), generator=generator)
        acc = evaluate_accuracy(models, self.task, "validation").double()
        # A decoded model can hold NaN weights; it must rank last, not break the sort.
        return torch.nan_to_num(acc, nan=-1.0)

    def draw(
        self,
        num_samples: int,
        method: str = "kde30",
        seed: int = 0,
        prompts=None,
        num_draws: int | None = None,
        rounds: int = 2,
        bandwidth="silverman",
        bandwidth_scale: float | str = "auto",
        spread: float = 0.1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw latents [num_samples, N, L] with a method (see `generate`); returns (latents, scores),
        scores [num_samples] (validation accuracy, best first) for SUB/BOOT, else None."""
        check_num_samples(num_samples)
        generator = torch.Generator().manual_seed(int(seed))
        kind, sampler = self.sampler(method, prompts, bandwidth, bandwidth_scale, spread)
        if not kind.startswith(("sub", "boot")):
            return sampler.sample(num_samples, generator), None
        draws = num_draws or 5 * num_samples
        # Scoring conditions BatchNorm on its own generator (seed + 1, as `items`), so the draws do
        # not depend on it and the models returned are the models scored.
        score_fn = lambda z: self.score(z, torch.Generator().manual_seed(int(seed) + 1))  # noqa: E731
        if kind.startswith("sub"):
            return sub_sample(sampler, score_fn, num_samples, draws, generator)
        return boot_sample(sampler, score_fn, num_samples, draws, rounds, generator)

    def items(self, flat: torch.Tensor, latents: torch.Tensor, scores: torch.Tensor | None = None,
              condition_bn: bool = True, seed: int = 0) -> list[dict]:
        """Decoded flat weights [k, P] -> k result dicts: "model" (nn.Module, eval mode; None when the
        architecture has no builder here), "state_dict", "latents" [N, L] and, for SUB/BOOT, "score"."""
        if self.buildable:
            models = self.build(flat, condition_bn, torch.Generator().manual_seed(int(seed) + 1))
            state_dicts = [m.state_dict() for m in models]
        else:
            models, state_dicts = [None] * len(flat), [self.layout.unflatten(row) for row in flat]
        out = []
        for i, (m, sd) in enumerate(zip(models, state_dicts)):
            item = {"model": m, "state_dict": sd, "latents": latents[i].clone()}
            if scores is not None:
                item["score"] = float(scores[i])
            out.append(item)
        return out

    def generate(self, num_samples: int, method: str = "kde30", seed: int = 0, prompts=None,
                 condition_bn: bool = True, **draw_options) -> list[dict]:
        """Draw `num_samples` new models; a list of dicts as in `items`.

        method: "kde30" (KDE on the best 30% anchors; "kde50" the best 50%, ...), "sub" (draw
        num_draws, default 5 x num_samples, keep the best by validation accuracy), "boot" (SUB, then
        refit on the kept, `rounds` times), "gauss" (the published weak baseline: N(0, 10^2) per
        latent dimension), "gauss-fit30" (per-dimension Gaussian fitted to the best 30% anchors),
        "neighbours" (around `prompts`, noise `spread` x the anchors' std), "gan" / "diffusion" (the
        trained generative samplers, `train_generative_sampler`), "sub-gan" / "sub-diffusion" (SUB
        over their draws). Options: num_draws,
        rounds, bandwidth ("silverman", a float or a tensor), bandwidth_scale ("auto", the default:
        the validation-chosen scale stored with the anchors, see `bandwidth_scale`; or a number),
        spread.
        Same seed, same models.
        """
        latents, scores = self.draw(num_samples, method, seed, prompts, **draw_options)
        return self.items(self.decode(latents), latents, scores, condition_bn, seed)


def choose_bandwidth_scale(generator: ModelGenerator, scales: Sequence[float] = BANDWIDTH_SCALES,
                           num_samples: int = BANDWIDTH_CHOICE_SAMPLES, fraction: float = BANDWIDTH_CHOICE_FRACTION,
                           seed: int = 0) -> dict:
    """Choose the KDE bandwidth scale on validation data: for each of `scales`, draw `num_samples`
    latents from the KDE on the best `fraction` of the anchors (Silverman's rule x scale, the same
    seed for every scale), decode and build them, and score them with `generator.score`: accuracy on
    the task's validation split (the test split is never read). The scale with the highest mean
    validation accuracy wins; ties go to the larger scale.

    Returns {"bandwidth_scale": float, "bandwidth_choice": {"scales", "validation_accuracy",
    "num_samples", "fraction", "seed"}}, the form stored in the anchors' info.
    """
    scales = sorted(float(check_bandwidth_scale(s)) for s in scales)
    if not scales:
        raise ValueError("choose_bandwidth_scale needs at least one scale in the grid")
    best = best_fraction(generator.anchors.latents, generator.anchors.scores, fraction)
    accuracy = []
    for scale in scales:
        latents = KDESampler(best, "silverman", scale).sample(num_samples, torch.Generator().manual_seed(int(seed)))
        accuracy.append(float(generator.score(latents, torch.Generator().manual_seed(int(seed) + 1)).mean()))
    chosen = max(range(len(scales)), key=lambda i: (accuracy[i], scales[i]))
    return {"bandwidth_scale": scales[chosen],
            "bandwidth_choice": {"scales": scales, "validation_accuracy": accuracy, "num_samples": int(num_samples),
                                 "fraction": float(fraction), "seed": int(seed)}}


def train_generative_sampler(generator: ModelGenerator, kind: str, fraction: float = BANDWIDTH_CHOICE_FRACTION,
                             steps: Sequence[int] | None = None,
                             noise_scales: Sequence[float] = GENERATIVE_NOISE_SCALES,
                             etas: Sequence[float] = GENERATIVE_ETAS,
                             predictions: Sequence[str] = GENERATIVE_PREDICTIONS,
                             num_samples: int = BANDWIDTH_CHOICE_SAMPLES, seed: int = 0, progress: bool = True,
                             diversity: float | str | None = None, **settings) -> GenerativeSampler:
    """Train a "gan" or "diffusion" sampler on the best `fraction` of the generator's anchors and
    choose its settings on validation data, as `choose_bandwidth_scale` does: for each number of
    training `steps` (a sampler trained with `seed`; for diffusion, one for each of `predictions`,
    what its denoiser predicts), each of `noise_scales` and, for diffusion, each of `etas` (its
    draws' noise, downstream.generative), draw `num_samples` latents with a fixed seed,
    decode and build them, and score them by accuracy on the task's validation split (the test
    split is never read). The highest mean wins; ties go to more steps, then the later prediction,
    then the larger noise scale, then the larger eta. `steps` None: GENERATIVE_STEPS[kind] (a GAN's steps are snapshots of
    one training run). `settings` fix other options (downstream.generative.DEFAULTS).

    `diversity` weighs novelty: a setting whose validation draws lie, on average, closer to their
    nearest anchor (`nearest_anchor_distance`) than this floor is passed over while another reaches
    it (a sampler that copies its anchors scores their accuracy); "kde": the floor is the mean
    distance of as many KDE draws at the checkpoint's bandwidth scale, "1.5kde": 1.5 times that (more
    diverse than KDE, not just as diverse); None (default): accuracy alone.

    The chosen sampler is put into `generator.anchors.samplers[kind]` (`generator.anchors.save(folder)`
    writes it with the anchors) and returned; its config records the grid and its figures under "choice".
    """
    if kind not in GENERATIVE_KINDS:
        raise ValueError(f"unknown generative sampler {kind!r}; use one of {list(GENERATIVE_KINDS)}")
    steps = GENERATIVE_STEPS[kind] if steps is None else steps
    steps, scales = sorted(int(s) for s in steps), sorted(float(s) for s in noise_scales)
    etas = sorted(float(e) for e in etas) if kind == "diffusion" else [None]
    predictions = list(dict.fromkeys(predictions)) if kind == "diffusion" else [None]
    if not steps or not scales or not etas or not predictions:
        raise ValueError("train_generative_sampler needs at least one value of steps, of noise_scales, of etas and of "
                         "predictions")
    best = best_fraction(generator.anchors.latents, generator.anchors.scores, fraction)
    if len(best) < 2:
        raise ValueError(f"the best {fraction:.0%} of the {len(generator.anchors.scores)} anchors is {len(best)} model; a "
                         f"{kind} sampler learns from at least 2: raise --sampler-fraction, or store more anchors "
                         "(`hyperrep sample --prepare --anchor-epochs ...`)")
    floor = _diversity_floor(generator, best, diversity, num_samples, seed, fraction)
    trials, candidates = [], []
    config = {"fraction": float(fraction)}
    if kind == "gan":
        trained = {(n, None): s for n, s in train_gan_steps(best, steps, settings, seed, progress, config).items()}
    else:
        trained = {(n, p): train_sampler(best, kind, {**settings, "steps": n, "prediction": p}, seed, progress, config)
                   for p in predictions for n in steps}
    for (n, prediction), sampler in sorted(trained.items(), key=lambda item: item[0][0]):
        for scale, eta in itertools.product(scales, etas):
            draw = {"noise_scale": scale} | ({} if eta is None else {"eta": eta})
            sampler.settings.update(draw)
            latents = sampler.sample(num_samples, torch.Generator().manual_seed(int(seed)))
            trial = {"steps": n, **({} if prediction is None else {"prediction": prediction}), **draw,
                     "validation_accuracy": float(generator.score(latents, torch.Generator().manual_seed(int(seed) + 1)).mean())}
            if floor is not None:
                trial["distance"] = float(nearest_anchor_distance(generator, latents, fraction).mean())
            trials.append(trial)
            candidates.append((trial, sampler))
    diverse = [c for c in candidates if floor is None or c[0]["distance"] >= floor] or candidates
    # the highest accuracy; ties go to the later trial (more steps, then the larger noise scale and eta)
    trial, sampler = max(reversed(diverse), key=lambda c: c[0]["validation_accuracy"])
    sampler.settings.update({k: trial[k] for k in ("noise_scale", "eta") if k in trial})
    sampler.config["choice"] = {"trials": trials, "num_samples": int(num_samples), "seed": int(seed),
                                "split": "validation", "diversity_floor": floor}
    generator.anchors.samplers[kind] = sampler
    return sampler


def format_trials(trials: Sequence[dict]) -> str:
    """The validation trials of `train_generative_sampler` as one line: "8000 steps x sample x noise 1 x
    eta 1: 0.918 at distance 0.029, ..."."""
    return ", ".join(f"{t['steps']} steps" + (f" x {t['prediction']}" if "prediction" in t else "")
                     + f" x noise {t['noise_scale']:g}" + (f" x eta {t['eta']:g}" if "eta" in t else "")
                     + f": {t['validation_accuracy']:.3f}" + (f" at distance {t['distance']:.3f}" if "distance" in t else "")
                     for t in trials)


def check_diversity(diversity) -> float | str | None:
    """None, a distance >= 0 (a number or its text, as the CLI passes it), "kde" or "Fkde" (F > 0 times
    as far as KDE draws, e.g. "1.5kde")."""
    if diversity is None:
        return None
    try:
        if isinstance(diversity, str) and diversity.strip().lower().endswith("kde"):
            if _kde_multiple(diversity) > 0:
                return diversity
        elif not isinstance(diversity, bool) and float(diversity) >= 0:
            return float(diversity)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"the diversity floor (--sampler-diversity) must be 'kde', a multiple of it such as '1.5kde', "
                     f"or a distance >= 0, got {diversity!r}")


def _kde_multiple(diversity: str) -> float:
    """F of "Fkde" (1 for "kde")."""
    return float(diversity.strip().lower()[:-3] or 1)


def _diversity_floor(generator: ModelGenerator, best: torch.Tensor, diversity, num_samples: int, seed: int,
                     fraction: float) -> float | None:
    diversity = check_diversity(diversity)
    if not isinstance(diversity, str):
        return diversity
    draws = KDESampler(best, "silverman", generator.bandwidth_scale()).sample(num_samples, torch.Generator().manual_seed(int(seed)))
    return _kde_multiple(diversity) * float(nearest_anchor_distance(generator, draws, fraction).mean())


@torch.no_grad()
def nearest_anchor_distance(generator: ModelGenerator, latents: torch.Tensor,
                            fraction: float = BANDWIDTH_CHOICE_FRACTION) -> torch.Tensor:
    """How new sampled models are: the weight-space distance [k] of each model decoded from latents
    [k, N, L] to the nearest decoded anchor among the best `fraction`, divided by the median distance
    of such an anchor to its nearest other one (0 = a copy of an anchor, 1 = as far from the zoo as
    neighbouring zoo models are from each other). Needs at least 2 anchors in the fraction."""
    best = best_fraction(generator.anchors.latents, generator.anchors.scores, fraction)
    if len(best) < 2:
        raise ValueError(f"the best {fraction:.0%} of the anchors is {len(best)} model; a spacing needs at least 2")
    anchors = generator.decode(best).double()
    between = torch.cdist(anchors, anchors).fill_diagonal_(float("inf")).min(1).values.median()
    return (torch.cdist(generator.decode(latents).double(), anchors).min(1).values / between).float()


def check_num_samples(num_samples) -> int:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}; ask for at least one model")
    return num_samples
