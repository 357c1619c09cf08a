"""Population training: many same-architecture models trained at once.

`StackedPopulation` stacks the parameters of M models ([M, *shape] per tensor) and runs them as one
network: convolutions become grouped convolutions (model m is group m, fed its own batch), linear
layers become batched matrix products. Each model keeps its own initialisation, data order,
learning rate, weight decay, dropout rate and optimizer (Adam, AdamW or SGD with momentum, applied
element-wise on the stacked tensors, so it equals M independent optimizers). Sequential stacks of
Conv2d / Linear / pooling / activations / Dropout / Flatten stack; anything else (BatchNorm,
residual blocks) trains with `LoopPopulation`, the same interface one model after another, which
is also the one-at-a-time reference the tests and benchmark compare against.

Shapes: per-model inputs [M, B, C, H, W]; shared inputs (evaluation) [B, C, H, W]; logits [M, B, K].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..layout import WeightLayout
from .tasks import TaskData

OPTIMIZERS = ("adam", "adamw", "sgd")
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d)


class NotStackable(ValueError):
    """The models cannot be stacked (a layer type the stacked forward does not know)."""


@dataclass
class TrainSettings:
    """Per-model training settings: `seed` fixes the data order; optimizer is one of OPTIMIZERS."""

    seed: int = 0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9

    def __post_init__(self):
        self.optimizer = self.optimizer.lower()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}")


def data_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which a model with `seed` sees the n training examples in `epoch` ([n] int64)."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n, generator=g)


def make_optimizer(params, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


class StackedOptimizer:
    """Adam / AdamW / SGD-with-momentum for stacked tensors [M, ...], one setting per model.

    Follows torch.optim's update rules (non-foreach), so model m evolves as with its own optimizer.
    Models with `active[m] == False` (diverged) are left unchanged.
    """

    def __init__(self, params: list[torch.Tensor], settings: Sequence[TrainSettings], betas=(0.9, 0.999), eps=1e-8):
        dev = params[0].device
        col = lambda vals: torch.tensor(vals, dtype=params[0].dtype, device=dev)  # noqa: E731
        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.lr = col([s.lr for s in settings])
        self.wd = col([s.weight_decay for s in settings])
        self.momentum = col([s.momentum for s in settings])
        kinds = [s.optimizer for s in settings]
        self.is_sgd = torch.tensor([k == "sgd" for k in kinds], device=dev)
        self.is_adamw = col([k == "adamw" for k in kinds])
        self.has_sgd, self.has_adam = any(k == "sgd" for k in kinds), any(k != "sgd" for k in kinds)
        self.state = [{"m": torch.zeros_like(p), "v": torch.zeros_like(p), "buf": torch.zeros_like(p)} for p in params]

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2_sqrt = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr, wd = self.lr.view(shape), self.wd.view(shape)
            step = torch.zeros_like(p)
            if self.has_adam:
                adamw = self.is_adamw.view(shape)
                g = p.grad + (wd * (1 - adamw)) * p  # Adam's L2 term; AdamW decays below instead
                st["m"].lerp_(g, 1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (st["v"].sqrt() / bc2_sqrt).add_(self.eps)
                step = (lr / bc1) * st["m"] / denom + (lr * wd * adamw) * p
            if self.has_sgd:
                g = p.grad + wd * p
                st["buf"].mul_(self.momentum.view(shape)).add_(g)
                step = torch.where(self.is_sgd.view(shape), lr * st["buf"], step)
            p.sub_(torch.where(active.view(shape), step, torch.zeros_like(step)))
            p.grad = None


class StackedPopulation:
    """M nn.Sequential models of one architecture as one stacked network (see module docstring)."""

    def __init__(self, models: Sequence[nn.Module], settings: Sequence[TrainSettings], channels_last: bool = True):
        template = models[0]
        if not isinstance(template, nn.Sequential):
            raise NotStackable(f"{type(template).__name__} is not an nn.Sequential")
        self.M, self.settings, self.channels_last = len(models), list(settings), channels_last
        shapes = {structure(m) for m in models}
        if len(shapes) > 1:
            raise NotStackable("the models differ in a layer other than dropout (e.g. activation): group them first")
        self.layout = WeightLayout.from_state_dict(template.state_dict())
        self.layers: list[tuple[str, nn.Module, int]] = []
        self.dropout: dict[int, torch.Tensor] = {}
        for i, mod in enumerate(template):
            if isinstance(mod, nn.Conv2d):
                if mod.groups != 1 or mod.padding_mode != "zeros" or mod.dilation != (1, 1):
                    raise NotStackable(f"layer {i}: only plain Conv2d (groups=1, zero padding) stacks")
                self.layers.append(("conv", mod, i))
            elif isinstance(mod, nn.Linear):
                self.layers.append(("linear", mod, i))
            elif isinstance(mod, nn.Flatten):
                self.layers.append(("flatten", mod, i))
            elif isinstance(mod, nn.Dropout):
                self.dropout[i] = torch.tensor([float(m[i].p) for m in models])
                self.layers.append(("dropout", mod, i))
            elif isinstance(mod, _ELEMENTWISE):
                self.layers.append(("elementwise", mod, i))
            else:
                raise NotStackable(f"layer {i} ({type(mod).__name__}) does not stack")
        param_names = {n for n, _ in template.named_parameters()}
        if set(self.layout.names) != param_names:
            raise NotStackable("the models hold float buffers (e.g. BatchNorm statistics): they do not stack")
        device = next(template.parameters()).device
        sds = [m.state_dict() for m in models]
        self.params = {
            n: torch.stack([sd[n].detach() for sd in sds]).to(device).requires_grad_(True) for n in self.layout.names
        }
        self.dropout = {i: p.to(device) for i, p in self.dropout.items()}
        self.diverged = torch.zeros(self.M, dtype=torch.bool, device=device)
        self.optimizer = StackedOptimizer(list(self.params.values()), self.settings)

    def forward(self, x: torch.Tensor, shared: bool = False, train: bool = False) -> torch.Tensor:
        """x [M, B, ...] (each model its own batch) or [B, ...] with shared=True -> logits [M, B, K]."""
        M, state, h = self.M, "input", x
        B = x.shape[0] if shared else x.shape[1]
        for kind, mod, i in self.layers:
            if kind == "conv":
                w = self.params[f"{i}.weight"]
                b = self.params.get(f"{i}.bias")
                wf, bf = w.reshape(M * w.shape[1], *w.shape[2:]), None if b is None else b.reshape(-1)
                if state == "input" and shared:
                    # one input for all models: an ordinary convolution with all models' filters
                    h = F.conv2d(h, wf, bf, mod.stride, mod.padding)
                else:
                    if state == "input":
                        h = h.transpose(0, 1).reshape(B, M * h.shape[2], *h.shape[3:])
                        if self.channels_last:
                            h = h.contiguous(memory_format=torch.channels_last)
                    h = F.conv2d(h, wf, bf, mod.stride, mod.padding, groups=M)
                state = "conv"
            elif kind == "flatten":
                if state == "conv":
                    h = h.reshape(B, M, -1).transpose(0, 1)
                elif state == "input":
                    h = h.reshape(B, -1).expand(M, B, -1) if shared else h.reshape(M, B, -1)
                state = "vec"
            elif kind == "linear":
                if state != "vec":
                    raise NotStackable(f"layer {i}: Linear must follow Flatten to stack")
                w, b = self.params[f"{i}.weight"], self.params.get(f"{i}.bias")
                h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            elif kind == "dropout":
                p = self.dropout[i]
                if train and bool((p > 0).any()):
                    # per-channel rates broadcast over h itself: a reshape would drop channels_last,
                    # and grouped convolutions on NCHW inputs are many times slower on CPUs
                    if state == "conv":
                        pv = p.repeat_interleave(h.shape[1] // M).view(1, -1, *([1] * (h.dim() - 2)))
                    else:
                        pv = p.view(M, *([1] * (h.dim() - 1)))
                    keep = (torch.rand_like(h) >= pv).to(h.dtype) / (1 - pv).clamp_min(1e-12)
                    h = h * keep
            else:
                h = mod(h)
        return h

    def losses(self, x, y, shared=False, train=False) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy per model [M] and number correct per model [M]; y [M, B] or [B]."""
        logits = self.forward(x, shared=shared, train=train)
        M, B, K = logits.shape
        yy = y.expand(M, B) if shared else y
        ce = F.cross_entropy(logits.reshape(M * B, K), yy.reshape(-1), reduction="none").view(M, B)
        return ce.mean(1), (logits.argmax(-1) == yy).sum(1)

    def train_epoch(self, task: TaskData, epoch: int, batch_size: int, progress: tqdm | None = None) -> None:
        x, y = task.train_x, task.train_y
        n = len(y)
        order = torch.stack([data_order(s.seed, epoch, n) for s in self.settings]).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]  # [M, b]: each model its own batch
            loss, _ = self.losses(x[idx], y[idx], train=True)
            bad = ~torch.isfinite(loss)
            self.diverged |= bad
            torch.where(self.diverged, torch.zeros_like(loss), loss).sum().backward()
            self.optimizer.step(~self.diverged)
        if progress is not None:
            progress.update(self.M)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss [M] and accuracy [M] of every model on (x [N, ...], y [N])."""
        batch_size = batch_size or max(16, 8192 // self.M)  # bounds the [B, M*C, H, W] activations
        loss_sum = torch.zeros(self.M, device=x.device, dtype=torch.float64)
        correct = torch.zeros(self.M, device=x.device, dtype=torch.float64)
        for s in range(0, len(y), batch_size):
            loss, c = self.losses(x[s : s + batch_size], y[s : s + batch_size], shared=True)
            loss_sum += loss.double() * len(y[s : s + batch_size])
            correct += c
        return (loss_sum / len(y)).float(), (correct / len(y)).float()

    def flat_weights(self) -> torch.Tensor:
        """[M, P] float32 in the WeightLayout order of the architecture."""
        return torch.cat([self.params[n].detach().reshape(self.M, -1) for n in self.layout.names], 1).float().cpu()

    def load_into(self, models: Sequence[nn.Module]) -> None:
        """Copy the trained weights back into the given modules."""
        for m, flat in zip(models, self.flat_weights()):
            m.load_state_dict(self.layout.unflatten(flat), strict=False)


class LoopPopulation:
    """The same interface as StackedPopulation, one model after another (any architecture)."""

    def __init__(self, models: Sequence[nn.Module], settings: Sequence[TrainSettings]):
        self.models, self.settings, self.M = list(models), list(settings), len(models)
        self.layout = WeightLayout.from_state_dict(self.models[0].state_dict())
        self.optimizers = [make_optimizer(m.parameters(), s) for m, s in zip(self.models, self.settings)]
        self.diverged = torch.zeros(self.M, dtype=torch.bool)

    def train_epoch(self, task: TaskData, epoch: int, batch_size: int, progress: tqdm | None = None) -> None:
        x, y = task.train_x, task.train_y
        n = len(y)
        for k, (model, opt, s) in enumerate(zip(self.models, self.optimizers, self.settings)):
            model.train()
            order = data_order(s.seed, epoch, n).to(x.device)
            if not self.diverged[k]:
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    if not torch.isfinite(loss):
                        self.diverged[k] = True
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            if progress is not None:
                progress.update(1)

    @torch.no_grad()
    def evaluate(self, x, y, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        losses, accs = [], []
        for model in self.models:
            model.eval()
            loss_sum, correct = 0.0, 0
            for s in range(0, len(y), batch_size):
                out = model(x[s : s + batch_size])
                loss_sum += F.cross_entropy(out, y[s : s + batch_size], reduction="sum").item()
                correct += (out.argmax(-1) == y[s : s + batch_size]).sum().item()
            losses.append(loss_sum / len(y))
            accs.append(correct / len(y))
        return torch.tensor(losses), torch.tensor(accs)

    def flat_weights(self) -> torch.Tensor:
        return torch.stack([self.layout.flatten(m.state_dict()) for m in self.models]).cpu()

    def load_into(self, models: Sequence[nn.Module]) -> None:
        for src, dst in zip(self.models, models):
            if src is not dst:
                dst.load_state_dict(src.state_dict())


def structure(model: nn.Module) -> tuple:
    """What must agree for models to stack: every module's type and settings, dropout rates aside."""
    return tuple((name, type(m).__name__, "" if isinstance(m, nn.Dropout) else m.extra_repr()) for name, m in model.named_modules())


def group_by_structure(models: Sequence[nn.Module]) -> list[list[int]]:
    """Indices of the models, grouped so that each group stacks (same structure)."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(structure(m), []).append(i)
    return list(groups.values())


def make_population(models: Sequence[nn.Module], settings: Sequence[TrainSettings], stacked: bool = True):
    """A StackedPopulation when the models stack (and `stacked`), else a LoopPopulation."""
    if not models:
        raise ValueError("a population needs at least one model")
    if len(settings) != len(models):
        raise ValueError(f"got {len(models)} models but {len(settings)} training settings")
    if stacked:
        try:
            return StackedPopulation(models, settings)
        except NotStackable:
            pass
    return LoopPopulation(models, settings)


SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))


def epoch_metrics(population, task: TaskData) -> dict[str, torch.Tensor]:
    """train/val/test accuracy and loss of every model ([M] each), ggap and diverged."""
    out = {}
    for short, split in SPLITS:
        loss, acc = population.evaluate(*task.split(split))
        out[f"{short}_loss"], out[f"{short}_acc"] = loss.cpu(), acc.cpu()
    out["ggap"] = out["train_acc"] - out["test_acc"]
    bad = ~torch.isfinite(out["train_loss"]) | ~torch.isfinite(population.flat_weights()).all(1)
    population.diverged |= bad.to(population.diverged.device)
    out["diverged"] = population.diverged.cpu().clone()
    return out


def train_population(
    population,
    task: TaskData,
    epochs: int,
    batch_size: int = 10,
    on_checkpoint: Callable[[int, dict, torch.Tensor], None] | None = None,
    checkpoint_epochs: Sequence[int] | None = None,
    progress: bool | tqdm = True,
    desc: str = "population",
) -> list[dict[str, torch.Tensor]]:
    """Train for `epochs`, evaluating epoch 0 (the initial state) and after every epoch.

    `on_checkpoint(epoch, metrics, flat_weights [M, P])` runs for each epoch in checkpoint_epochs
    (default: all, 0 included). `progress` is a flag or a tqdm bar (any object with `update(n)`,
    counting model-epochs) to advance.
    Returns the per-epoch metrics (epochs + 1 dicts of [M] tensors).
    """
    checkpoints = set(range(epochs + 1) if checkpoint_epochs is None else checkpoint_epochs)
    history = []
    own_bar = isinstance(progress, bool)
    bar = tqdm(total=population.M * epochs, desc=desc, unit="model-epoch", disable=not progress, dynamic_ncols=True) if own_bar else progress
    for epoch in range(epochs + 1):
        if epoch > 0:
            population.train_epoch(task, epoch, batch_size, progress=bar)
        metrics = epoch_metrics(population, task)
        history.append(metrics)
        if on_checkpoint is not None and epoch in checkpoints:
            on_checkpoint(epoch, metrics, population.flat_weights())
    if own_bar:
        bar.close()
    return history


def evaluate_accuracy(models: Sequence[nn.Module], task_data: TaskData, split: str = "test") -> torch.Tensor:
    """Accuracy [M] of each model on a split of the task (models of one structure evaluated stacked)."""
    acc = torch.zeros(len(models))
    for idx in group_by_structure(models):
        population = make_population([models[i] for i in idx], [TrainSettings() for _ in idx])
        acc[idx] = population.evaluate(*task_data.split(split))[1].cpu()
    return acc


def finetune(
    models: Sequence[nn.Module],
    task: TaskData,
    epochs: int,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    batch_size: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Fine-tune models (grouped by structure, each group as one population); updated in place.

    Model i sees the data in the order of seed + i. Returns per-epoch metrics as tensors
    [epochs + 1, M] (row 0: before fine-tuning), keys train_acc, val_acc, test_acc, train_loss,
    val_loss, test_loss, ggap, diverged.
    """
    out: dict[str, torch.Tensor] = {}
    for idx in group_by_structure(models):
        group = [models[i] for i in idx]
        settings = [TrainSettings(seed=seed + i, optimizer=optimizer, lr=lr, weight_decay=weight_decay) for i in idx]
        population = make_population(group, settings)
        history = train_population(population, task, epochs, batch_size, progress=progress, desc="fine-tune")
        population.load_into(group)
        for k in history[0]:
            col = torch.stack([h[k] for h in history])
            out.setdefault(k, torch.zeros(epochs + 1, len(models), dtype=col.dtype))[:, idx] = col
    return out
