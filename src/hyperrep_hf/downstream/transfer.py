"""Beyond the training zoos: models of an unseen architecture, and generated models on another task.

A SANE checkpoint trained on zoos A, B, ... can embed, reconstruct and sample models of an
architecture C that was in none of them, as long as the tokenizer can encode C's layer kinds
(tokens of the checkpoint's token size; a layer kind without a handler is refused, naming
`WeightTokenizer.register_layer_handler`). C has no zoo, so its tokens cannot be standardised with
zoo statistics; its layout is standardised by each model's own statistics instead
(`WeightTokenizer.set_normalization`: "model" = per model and layer, "token" = per token), and
decoding a sample reuses the statistics of the prompt model it was drawn around.
`UNSEEN_NORMALIZATION` is the default mode (fixed a priori, see there); `choose_normalization`
picks one on an architecture's validation models.

Positions: C may need more tokens, layers or channels than the checkpoint's position tables
(config.max_positions) hold. positions="refuse" (default) raises an error naming the fix;
"clamp" maps every position beyond a table to its last entry (such tokens share a position
embedding: an approximation, reported as such).

Transfer of generated models: `transfer_table` compares, after 0 / 1 / 5 epochs of fine-tuning on a
target task, neighbour samples around prompt models (an unseen architecture, or a zoo of another
task) with the prompts themselves, their SANE reconstructions and the same architecture trained
from scratch. A target task of another input shape is refused (`check_task_fits`).

Shapes: flat weights [M, P]; latents [M, N, latent_dim]; token_stats [M, N, 2].
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .embedding import decode, encode

# The default, fixed a priori: under "token" a 1-value token (a BatchNorm running statistic, a bias
# column chunk) loses everything to its own statistics, so "model" is the one safe for every
# architecture. `choose_normalization` picks per architecture on its validation models; on the
# study's unseen MLP (no 1-value tokens; scripts/study_generalisation.py, 2026-12-02) it picked
# "token" (per-layer relative reconstruction error 0.0317 vs 0.0340 for "model").
UNSEEN_NORMALIZATION = "model"
POSITION_POLICIES = ("refuse", "clamp")


def check_position_policy(policy: str) -> str:
    if policy not in POSITION_POLICIES:
        raise ValueError(f"positions must be one of {list(POSITION_POLICIES)}, got {policy!r}")
    return policy


def positions_needed(token_layout) -> tuple[int, int, int]:
    """(tokens, layers, channels) a layout's positions (n, l, k) need in the position tables."""
    pos = token_layout.positions
    return int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1, int(pos[:, 2].max()) + 1


def check_positions(token_layout, config, policy: str = "refuse") -> None:
    """Refuse (policy "refuse") a layout whose positions lie beyond the checkpoint's tables, naming the fix."""
    check_position_policy(policy)
    needed, limits = positions_needed(token_layout), tuple(int(x) for x in config.max_positions)
    if policy == "refuse" and any(n > m for n, m in zip(needed, limits)):
        raise ValueError(
            f"this architecture needs position tables (tokens, layers, channels) of {needed}, the checkpoint's hold "
            f"{limits} (config.max_positions); pass positions='clamp' to map positions beyond a table to its last "
            "entry (an approximation), or train a checkpoint whose max_positions cover this architecture")


def clamp_positions(positions: torch.Tensor, max_positions) -> torch.Tensor:
    """positions [..., 3] (n, l, k) -> the same with each part clamped to its table: [0, max - 1]."""
    limits = torch.as_tensor([int(x) - 1 for x in max_positions], device=positions.device)
    return torch.minimum(positions, limits)


def register_unseen(tokenizer, model_or_state_dict, config=None, normalization: str = UNSEEN_NORMALIZATION,
                    positions: str = "refuse") -> int:
    """Add the token layout of a model (nn.Module or state_dict) of an architecture the tokenizer was
    not fitted on, standardised by `normalization` ("model" or "token"); returns its layout id.

    A layout that already exists keeps its settings (a training zoo's keeps its fitted statistics).
    An nn.Module is read by its module types, so a layer kind the tokenizer cannot encode is refused
    with the fix; its permutation spec is stored when the architecture has one. With `config` (the
    SANE config) the layout's positions are checked against its tables (`check_positions`).
    """
    check_position_policy(positions)
    if normalization not in ("model", "token"):
        raise ValueError(f"an unseen architecture has no zoo statistics: normalization must be 'model' or 'token', "
                         f"got {normalization!r}")
    known = len(tokenizer.layouts)
    try:
        layout_id = tokenizer.layout_of(model_or_state_dict)
    except ValueError as err:
        raise ValueError(f"the tokenizer cannot encode this model's layers, so no checkpoint can embed it: {err}") from err
    tl = tokenizer.layouts[layout_id]
    if layout_id >= known and not tl.standardized:
        tokenizer.set_normalization(normalization, layout_id)
        if isinstance(model_or_state_dict, nn.Module):
            from ..weightspace.permutation import permutation_spec

            try:
                tokenizer.set_permutation_spec(permutation_spec(model_or_state_dict), layout_id)
            except ValueError:
                pass  # no spec for this architecture: permutation-averaged embeddings stay unavailable
    if config is not None:
        check_positions(tl, config, positions)
    return layout_id


def _flat(tokenizer, layout_id: int, models) -> torch.Tensor:
    """Models / state_dicts / flat vectors of one layout -> flat weights [M, P]."""
    if torch.is_tensor(models):
        return models.float().reshape(-1, tokenizer.layouts[layout_id].weights.num_weights)
    layout = tokenizer.layouts[layout_id].weights
    rows = []
    for m in models:
        sd = m.state_dict() if isinstance(m, nn.Module) else m
        rows.append(layout.flatten(layout.match(sd)) if isinstance(sd, Mapping) else torch.as_tensor(sd).float().reshape(-1))
    return torch.stack(rows)


def encode_models(model, tokenizer, weights: torch.Tensor, layout_id: int, positions: str = "refuse",
                  window_size: int | None = None, halo: int | None = None):
    """Flat weights [M, P] of one layout -> (latents [M, N, latent_dim] on the CPU, the tokenizer's
    encoding with positions clamped under positions="clamp")."""
    check_positions(tokenizer.layouts[layout_id], model.config, positions)
    enc = tokenizer.tokenize_flat(weights, layout_id=layout_id)
    if positions == "clamp":
        enc["positions"] = clamp_positions(enc["positions"], model.config.max_positions)
    return encode(model, enc, window_size, halo).cpu(), enc


def decode_models(model, tokenizer, latents: torch.Tensor, layout_id: int, token_stats=None, positions: str = "refuse",
                  window_size: int | None = None, halo: int | None = None) -> torch.Tensor:
    """Latents [M, N, latent_dim] -> flat weights [M, P], un-standardised with `token_stats` [M, N, 2]
    for a self-normalised layout (those of the models the latents came from or were drawn around)."""
    tl = tokenizer.layouts[layout_id]
    check_positions(tl, model.config, positions)
    pos = tl.positions.unsqueeze(0).expand(len(latents), -1, -1)
    if positions == "clamp":
        pos = clamp_positions(pos, model.config.max_positions)
    tokens = decode(model, latents, pos, None, window_size, halo).float().cpu()
    return tokenizer.decode_flat(tokens, layout_id=layout_id, token_stats=token_stats)


def reconstruct(model, tokenizer, weights: torch.Tensor, layout_id: int, positions: str = "refuse") -> torch.Tensor:
    """Flat weights [M, P] -> their SANE reconstruction [M, P] (encode, decode, un-standardise)."""
    latents, enc = encode_models(model, tokenizer, weights, layout_id, positions)
    return decode_models(model, tokenizer, latents, layout_id, enc.get("token_stats"), positions)


def draw_neighbours(model, tokenizer, prompts, num_samples: int, spread: float = 0.1, seed: int = 0,
                    layout_id: int | None = None, positions: str = "refuse", normalization: str = UNSEEN_NORMALIZATION):
    """Neighbour sampling around prompt models of any architecture the tokenizer can encode.

    prompts: nn.Modules (or state_dicts) of one architecture. Each draw picks a prompt at random and
    adds Gaussian noise of `spread` x the prompts' latent std per dimension (over the prompts when
    there are several, over one prompt's tokens when there is one: an unseen architecture has no
    anchors to take a spread from).
    Returns (latents [num_samples, N, L], prompt index of each draw [num_samples], the drawn prompts'
    token_stats [num_samples, N, 2] (None for a zoo-standardised layout), layout_id).
    """
    items = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
    if not items:
        raise ValueError("neighbour sampling needs at least one prompt model")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(spread, bool) or not (isinstance(spread, (int, float)) and spread >= 0):
        raise ValueError(f"spread must be a number >= 0, got {spread!r}")
    if layout_id is None:
        layout_id = register_unseen(tokenizer, items[0], model.config, normalization, positions)
    latents, enc = encode_models(model, tokenizer, _flat(tokenizer, layout_id, items), layout_id, positions)
    std = latents.std(0) if len(latents) > 1 else latents[0].std(0, keepdim=True).expand_as(latents[0])
    generator = torch.Generator().manual_seed(int(seed))
    which = torch.randint(0, len(latents), (num_samples,), generator=generator)
    drawn = latents[which] + torch.randn((num_samples, *latents.shape[1:]), generator=generator) * spread * std
    stats = enc.get("token_stats")
    return drawn, which, None if stats is None else stats[which], layout_id


def sample_neighbours(model, tokenizer, prompts, num_samples: int, spread: float = 0.1, seed: int = 0,
                      layout_id: int | None = None, positions: str = "refuse", normalization: str = UNSEEN_NORMALIZATION):
    """`draw_neighbours`, decoded with each draw's prompt statistics: (flat weights [num_samples, P],
    latents [num_samples, N, L], prompt index [num_samples], layout_id)."""
    drawn, which, stats, layout_id = draw_neighbours(model, tokenizer, prompts, num_samples, spread, seed, layout_id,
                                                     positions, normalization)
    return decode_models(model, tokenizer, drawn, layout_id, stats, positions), drawn, which, layout_id


def models_from_flat(prompts: Sequence[nn.Module], which: torch.Tensor, weights: torch.Tensor, layout) -> list[nn.Module]:
    """Flat weights [k, P] -> k copies of their prompt modules (prompts[which[i]]) holding them, eval mode."""
    out = []
    for i, row in zip(which.tolist(), weights):
        m = copy.deepcopy(prompts[i])
        state = m.state_dict()
        state.update({k: v.to(state[k].dtype) for k, v in layout.unflatten(row).items()})
        m.load_state_dict(state)
        out.append(m.eval())
    return out


def check_task_fits(model: nn.Module, task, what: str = "the models") -> None:
    """Refuse a target task whose inputs or classes the models cannot take, naming the fix."""
    shape = tuple(task.input_shape)
    try:
        with torch.no_grad():
            out = copy.deepcopy(model).eval()(torch.zeros(2, *shape))
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(
            f"{what} cannot take the inputs of task {task.name!r} (shape {list(shape)}): {str(err).splitlines()[0]}; "
            "transfer needs a target task of the same input shape (resize its images, e.g. a task mapping with "
            "image_size)") from err
    if out.shape[-1] != task.num_classes:
        raise ValueError(f"{what} predict {out.shape[-1]} classes, task {task.name!r} has {task.num_classes}; "
                         "transfer needs a target task with as many classes")


def scratch_like(model: nn.Module, num_models: int, init: str = "default", seed: int = 0) -> list[nn.Module]:
    """`num_models` fresh copies of a model's architecture: every layer's reset_parameters under
    seed + i, then `init` (zoo.architectures.init_weights) as a zoo of it would be initialised."""
    from ..zoo.architectures import init_weights

    out = []
    for i in range(num_models):
        m = copy.deepcopy(model)
        torch.manual_seed(seed + i)
        for module in m.modules():
            if hasattr(module, "reset_parameters") and module is not m:
                module.reset_parameters()
        out.append(init_weights(m, init, generator=torch.Generator().manual_seed(seed + i)).train())
    return out


def transfer_table(model, tokenizer, prompts: Sequence[nn.Module], task, num_samples: int = 5,
                   epochs: Sequence[int] = (0, 1, 5), spread: float = 0.1, seed: int = 0, init: str = "default",
                   positions: str = "refuse", samples: Mapping[str, Sequence[nn.Module]] | None = None,
                   **finetune_options) -> list[dict]:
    """Accuracy on `task` (a TaskData) after fine-tuning for each of `epochs`: neighbour samples
    around `prompts` (nn.Modules of one architecture, e.g. one the checkpoint never saw), the prompts
    themselves, their SANE reconstructions, and `num_samples` models of the architecture from
    scratch (`init`). `samples` ({label: models}) adds other groups (e.g. KDE samples of a zoo of
    another task). Rows as `generation_table`: source, task, epoch, mean_acc, std_acc, num_models.
    finetune_options: lr, optimizer, weight_decay, batch_size (zoo.population.finetune)."""
    try:
        from .evaluation import finetuned_group_rows
    except ImportError as err:  # remote code without hyperrep_hf: fine-tuning needs the package
        raise ImportError("transfer_table fine-tunes models on task data, which needs hyperrep_hf installed "
                          "(pip install hyperrep_hf)") from err

    prompts = list(prompts)
    check_task_fits(prompts[0], task, "the prompt models")
    weights, _, which, layout_id = sample_neighbours(model, tokenizer, prompts, num_samples, spread, seed,
                                                     positions=positions)
    layout = tokenizer.layouts[layout_id].weights
    recon = reconstruct(model, tokenizer, _flat(tokenizer, layout_id, prompts), layout_id, positions)
    groups = {label: list(ms) for label, ms in (samples or {}).items()}
    groups["neighbours"] = models_from_flat(prompts, which, weights, layout)
    groups["reconstruction"] = models_from_flat(prompts, torch.arange(len(prompts)), recon, layout)
    groups["prompt"] = [copy.deepcopy(p).eval() for p in prompts]
    groups["scratch"] = scratch_like(prompts[0], num_samples, init, seed)
    return finetuned_group_rows(groups, task, epochs, seed, **finetune_options)


def layer_errors(tokenizer, layout_id: int, weights: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Relative reconstruction error of every layer [num_layers]: MSE_l / Var_l over the models'
    weights of layer l (weight and bias together), so layers of any scale count alike."""
    tl = tokenizer.layouts[layout_id]
    out = []
    for b in tl.blocks:
        cols = [slice(b.weight_offset, b.weight_offset + b.weight.numel)]
        if b.bias is not None:
            cols.append(slice(b.bias_offset, b.bias_offset + b.bias.numel))
        w = torch.cat([weights[:, c] for c in cols], 1).double()
        r = torch.cat([reconstruction[:, c] for c in cols], 1).double()
        out.append(float((r - w).square().mean() / w.var().clamp_min(1e-12)))
    return torch.tensor(out)


def choose_normalization(model, tokenizer, validation_models, modes: Sequence[str] = ("model", "token"),
                         positions: str = "refuse") -> dict:
    """Choose how to standardise an unseen architecture on VALIDATION models of it (nn.Modules or
    state_dicts of one architecture): for each mode, the mean per-layer relative reconstruction
    error (`layer_errors`) of the SANE checkpoint; the lowest wins. The tokenizer is not changed
    (each mode runs on a copy). Returns {"normalization": mode, "validation_error": {mode: error}}."""
    items = list(validation_models)
    if len(items) < 2:
        raise ValueError("choose_normalization needs at least two validation models of the architecture")
    errors = {}
    for mode in modes:
        tok = copy.deepcopy(tokenizer)
        layout_id = register_unseen(tok, items[0], model.config, mode, positions)
        if tok.layouts[layout_id].standardized:
            raise ValueError("the validation models are of an architecture the tokenizer has zoo statistics for; "
                             "choose_normalization is for architectures in no training zoo")
        tok.set_normalization(mode, layout_id)  # also when an earlier call registered the layout
        flat = _flat(tok, layout_id, items)
        errors[mode] = float(layer_errors(tok, layout_id, flat, reconstruct(model, tok, flat, layout_id, positions)).mean())
    return {"normalization": min(errors, key=errors.get), "validation_error": errors}
