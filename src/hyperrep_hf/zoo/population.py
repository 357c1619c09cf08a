"""Population training: many same-architecture models trained at once.

Every population holds M models' tensors stacked ([M, *shape] per tensor) and gives each model its
own initialisation, data order, learning rate, weight decay, dropout rate and optimizer (Adam,
AdamW or SGD with momentum, applied element-wise on the stacked tensors by `StackedOptimizer`, so
it equals M independent optimizers). Three ways to run the stack:

- `StackedPopulation`: nn.Sequential stacks of Conv2d / Linear / pooling / activations / Dropout /
  Flatten as one network of grouped convolutions (model m is group m, fed its own batch) and
  batched matrix products.
- `FunctionalPopulation`: any models that share a structure, BatchNorm and residual blocks
  included (ResNet-18, VGG with BN). Engine "grouped" runs the models' own forward code with each
  Conv / BatchNorm / Linear / Dropout swapped for its M-model version over channel blocks
  ([B, M*C, ...], model m owns block m; BatchNorm statistics per channel are then per model);
  engine "vmap" runs `torch.func.functional_call` under `torch.vmap` and works for anything vmap
  can batch. "auto" takes "grouped" when every layer has a grouped version and its outputs match
  the models' own on a probe batch, else "vmap". BatchNorm running statistics and
  num_batches_tracked are stacked buffers updated in place per model (zoo rows store them).
- `LoopPopulation`: the same interface one model after another (any architecture), also the
  one-at-a-time reference the tests and benchmark compare against.

`make_population` picks the first that applies. Shapes: per-model inputs [M, B, C, H, W]; shared
inputs (evaluation) [B, C, H, W]; logits [M, B, K].
"""

from __future__ import annotations

import copy
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
_TINY = torch.finfo(torch.float32).tiny
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
        kinds = [s.optimizer for s in settings]
        self.lr = col([s.lr for s in settings])
        self.wd = col([s.weight_decay for s in settings])
        self.momentum = col([s.momentum for s in settings])
        self.l2 = col([s.weight_decay if k == "adam" else 0.0 for s, k in zip(settings, kinds)])  # Adam's L2 term
        self.decoupled = col([s.lr * s.weight_decay if k == "adamw" else 0.0 for s, k in zip(settings, kinds)])  # AdamW's decay
        self.is_sgd = torch.tensor([k == "sgd" for k in kinds], device=dev)
        self.has_sgd, self.has_adam = any(k == "sgd" for k in kinds), any(k != "sgd" for k in kinds)
        self.has_l2, self.has_decoupled = bool((self.l2 != 0).any()), bool((self.decoupled != 0).any())
        self.has_sgd_decay = bool((self.wd[self.is_sgd] != 0).any())
        # only the state the optimizers in use need (Adam: m, v; SGD: the momentum buffer)
        self.state = [{k: torch.zeros_like(p) for k in (("m", "v") if self.has_adam else ()) + (("buf",) if self.has_sgd else ())} for p in params]

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One update of every model with active[m] (a [M] bool tensor); gradients are cleared."""
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2_sqrt = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
        all_active = bool(active.all())
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr = self.lr.view(shape)
            if self.has_adam:
                g = p.grad.addcmul(self.l2.view(shape), p) if self.has_l2 else p.grad
                st["m"].lerp_(g, 1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                # sqrt(0) takes a slow path on x86 CPUs (8x here; weights that see only padding have
                # gradient 0); sqrt of the smallest normal float instead changes no denominator
                denom = st["v"].clamp_min(_TINY).sqrt_().div_(bc2_sqrt).add_(self.eps)
                step = torch.div(st["m"], denom).mul_(lr / bc1)
                if self.has_decoupled:
                    step.addcmul_(self.decoupled.view(shape), p)
            if self.has_sgd:
                g = p.grad.addcmul(self.wd.view(shape), p) if self.has_sgd_decay else p.grad
                st["buf"].mul_(self.momentum.view(shape)).add_(g)
                sgd_step = st["buf"] * lr
                step = torch.where(self.is_sgd.view(shape), sgd_step, step) if self.has_adam else sgd_step
            p.sub_(step if all_active else torch.where(active.view(shape), step, torch.zeros((), dtype=p.dtype, device=p.device)))
            p.grad = None


class _StackedModels:
    """What every stacked population shares: training, evaluation and weights out of `self.tensors`
    (state_dict name -> [M, *shape]); subclasses give `forward(x, shared, train) -> [M, B, K]`."""

    M: int
    settings: list[TrainSettings]
    layout: WeightLayout
    tensors: dict[str, torch.Tensor]
    state_names: list[str]
    diverged: torch.Tensor
    optimizer: StackedOptimizer

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
        """[M, P] float32 in the WeightLayout order of the architecture (BatchNorm statistics included)."""
        return torch.cat([self.tensors[n].detach().reshape(self.M, -1) for n in self.layout.names], 1).float().cpu()

    def load_into(self, models: Sequence[nn.Module]) -> None:
        """Copy the trained weights (and buffers such as BatchNorm statistics) back into the given modules."""
        for k, m in enumerate(models):
            m.load_state_dict({n: self.tensors[n][k].detach() for n in self.state_names}, strict=False)



class StackedPopulation(_StackedModels):
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
        self.tensors, self.state_names = self.params, self.layout.names
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


# Channel-wise layers the grouped engine runs unchanged on [B, M*C, ...] (no parameters, no channel mixing).
_CHANNELWISE = _ELEMENTWISE + (
    nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.CELU, nn.SELU,
    nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
ENGINES = ("auto", "grouped", "vmap")


class _GroupedConv(nn.Module):
    """M convolutions as one with M times the groups: [B, M*C_in, ...] -> [B, M*C_out, ...]."""

    def __init__(self, conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, M: int):
        super().__init__()
        if conv.transposed or weight.dim() not in (4, 5, 6):
            raise NotStackable(f"{type(conv).__name__} has no grouped version")
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 4]
        self.weight, self.bias = weight, bias  # the population's stacked [M, C_out, C_in/g, *k] and [M, C_out]
        self.stride, self.padding, self.dilation, self.groups, self.pad = conv.stride, conv.padding, conv.dilation, conv.groups * M, None
        if conv.padding_mode != "zeros":
            self.pad, self.padding = (conv._reversed_padding_repeated_twice, conv.padding_mode), 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            h = F.pad(h, self.pad[0], mode=self.pad[1])
        bias = None if self.bias is None else self.bias.flatten()
        return self.conv(h, self.weight.flatten(0, 1), bias, self.stride, self.padding, self.dilation, self.groups)


class _GroupedBatchNorm(nn.Module):
    """M BatchNorms as one over M*C channels: statistics per channel are statistics per model, and
    the running statistics update the population's stacked buffers [M, C] in place."""

    def __init__(self, bn: nn.Module, tensors: dict[str, torch.Tensor], name: str):
        super().__init__()
        get = lambda key: tensors.get(f"{name}.{key}")  # noqa: E731
        self.weight, self.bias, self.running_mean, self.running_var = get("weight"), get("bias"), get("running_mean"), get("running_var")
        self.num_batches_tracked = get("num_batches_tracked")  # [M]
        self.momentum, self.eps = bn.momentum, bn.eps

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        flat = lambda t: None if t is None else t.view(-1)  # noqa: E731  (views: in-place updates reach the stack)
        batch_stats = self.training or self.running_mean is None
        return F.batch_norm(h, flat(self.running_mean), flat(self.running_var), flat(self.weight), flat(self.bias), batch_stats, self.momentum, self.eps)


class _GroupedLinear(nn.Module):
    """M Linear layers as one batched product: [B, M*in] -> [B, M*out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias  # [M, out, in], [M, out]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 2:
            raise NotStackable("the grouped engine runs Linear layers on [batch, features] inputs only")
        M, B = self.weight.shape[0], h.shape[0]
        hm = h.reshape(B, M, -1).transpose(0, 1)  # [M, B, in]
        w = self.weight.transpose(1, 2)
        out = torch.bmm(hm, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), hm, w)
        return out.transpose(0, 1).reshape(B, -1)


class _GroupedDropout(nn.Module):
    """Dropout with one rate per model over the channel blocks of [B, M*C, ...]."""

    def __init__(self, rates: torch.Tensor):
        super().__init__()
        self.rates, self.active = rates, bool((rates > 0).any())  # [M]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active):
            return h
        p = self.rates.repeat_interleave(h.shape[1] // len(self.rates)).view(1, -1, *([1] * (h.dim() - 2)))
        return h * ((torch.rand_like(h) >= p).to(h.dtype) / (1 - p).clamp_min(1e-12))


class _RateDropout(nn.Module):
    """nn.Dropout whose rate is a buffer, so that under vmap every model has its own."""

    def __init__(self, active: bool):
        super().__init__()
        self.register_buffer("rate", torch.zeros(()))
        self.active = active

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active):
            return h
        return h * ((torch.rand_like(h) >= self.rate).to(h.dtype) / (1 - self.rate).clamp_min(1e-12))


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class FunctionalPopulation(_StackedModels):
    """M models of one structure (any architecture: BatchNorm, residual blocks) trained as one.

    `engine`: "grouped" (the models' forward code on channel blocks [B, M*C, ...]: grouped
    convolutions, per-model BatchNorm over M*C channels, batched Linear), "vmap"
    (torch.func.functional_call under torch.vmap) or "auto" (see the module docstring). With
    `example_input` ([B, ...], a few inputs) "auto" chooses at once and a model that neither engine
    runs raises NotStackable here; otherwise it chooses on the first forward.
    """

    def __init__(self, models: Sequence[nn.Module], settings: Sequence[TrainSettings], engine: str = "auto",
                 example_input: torch.Tensor | None = None, channels_last: bool = True):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
        if len(settings) != len(models):
            raise ValueError(f"got {len(models)} models but {len(settings)} training settings")
        if len(group_by_structure(models)) > 1:
            raise ValueError("the models do not share one structure (layers other than dropout rates differ): "
                             "train each group of population.group_by_structure(models) as its own population")
        template = models[0]
        for name, mod in template.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats and mod.momentum is None:
                raise NotStackable(f"{name}: BatchNorm with momentum=None (a cumulative average) has no stacked version")
        self.M, self.settings, self.channels_last, self.engine = len(models), list(settings), channels_last, engine
        self.layout = WeightLayout.from_state_dict(template.state_dict())
        self.state_names = list(template.state_dict())
        named = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in models]
        missing = [n for n in self.state_names if n not in named[0]]
        if missing:
            raise NotStackable(f"state_dict entries {missing[:3]} are no parameter or buffer of their own (tied weights?)")
        param_names = [n for n, _ in template.named_parameters()]
        self.params = {n: torch.stack([d[n].detach() for d in named]) for n in param_names}
        if channels_last and engine != "vmap":
            # 2-D convolution weights [M, C_out, C_in, kh, kw] laid out so that their grouped view
            # [M*C_out, C_in, kh, kw] is channels_last, as oneDNN wants it: no copy per step
            for name, mod in template.named_modules():
                w = self.params.get(f"{name}.weight")
                if isinstance(mod, nn.Conv2d) and w is not None and w.dim() == 5:
                    self.params[f"{name}.weight"] = w.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(w.shape)
        self.params = {n: t.requires_grad_(True) for n, t in self.params.items()}
        self.buffers = {n: torch.stack([d[n].detach() for d in named]) for n, _ in template.named_buffers()}
        self.tensors = self.params | self.buffers
        device = next(iter(self.tensors.values())).device
        # nn.Dropout rates differ between models of one structure: a stacked rate per Dropout module
        dropouts = [n for n, mod in template.named_modules() if type(mod) is nn.Dropout]
        self.rates = {f"{n}.rate": torch.tensor([float(m.get_submodule(n).p) for m in models], device=device) for n in dropouts}
        self.base = copy.deepcopy(template)  # the vmap engine's module: its own tensors are replaced on every call
        for n in dropouts:
            _replace(self.base, n, _RateDropout(bool((self.rates[f"{n}.rate"] > 0).any())))
        self.grouped = self._grouped_module(template) if engine != "vmap" else None
        self.diverged = torch.zeros(self.M, dtype=torch.bool, device=device)
        self.optimizer = StackedOptimizer(list(self.params.values()), self.settings)
        if example_input is not None and engine == "auto":
            self._choose_engine(example_input.to(device), shared=True)

    def _grouped_module(self, template: nn.Module) -> nn.Module | None:
        """The template with every layer swapped for its M-model version over channel blocks; None
        (engine "auto") or NotStackable (engine "grouped") when a layer has none."""
        try:
            wide = copy.deepcopy(template)
            for name, mod in list(wide.named_modules()):
                has_children = next(mod.children(), None) is not None
                if has_children or isinstance(mod, nn.Sequential):
                    if mod._parameters or any(b is not None for b in mod._buffers.values()):
                        raise NotStackable(f"{name or 'the model'} ({type(mod).__name__}) uses tensors of its own in its forward")
                    continue
                if not name:
                    raise NotStackable(f"the model is a single {type(mod).__name__} layer")
                if isinstance(mod, nn.modules.conv._ConvNd):
                    _replace(wide, name, _GroupedConv(mod, self.params[f"{name}.weight"], self.params.get(f"{name}.bias"), self.M))
                elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    _replace(wide, name, _GroupedBatchNorm(mod, self.tensors, name))
                elif type(mod) is nn.Linear:
                    _replace(wide, name, _GroupedLinear(self.params[f"{name}.weight"], self.params.get(f"{name}.bias")))
                elif type(mod) is nn.Dropout:
                    _replace(wide, name, _GroupedDropout(self.rates[f"{name}.rate"]))
                elif isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
                    continue
                elif not isinstance(mod, _CHANNELWISE):
                    raise NotStackable(f"{name} ({type(mod).__name__}) has no grouped version")
            return wide
        except NotStackable:
            if self.engine == "grouped":
                raise
            return None

    def _grouped_forward(self, x: torch.Tensor, shared: bool, train: bool) -> torch.Tensor:
        M = self.M
        if shared:  # [B, C, ...] -> every model's copy side by side [B, M*C, ...]
            h = x.unsqueeze(1).expand(x.shape[0], M, *x.shape[1:]).reshape(x.shape[0], M * x.shape[1], *x.shape[2:])
        else:  # [M, B, C, ...] -> [B, M*C, ...]
            h = x.transpose(0, 1).reshape(x.shape[1], M * x.shape[2], *x.shape[3:])
        if self.channels_last and h.dim() == 4:
            h = h.contiguous(memory_format=torch.channels_last)  # grouped convolutions run faster on CPUs
        self.grouped.train(train)
        out = self.grouped(h)
        if out.dim() != 2 or out.shape[1] % M:
            raise NotStackable(f"the grouped model returned {list(out.shape)}, not [batch, models * classes]")
        return out.view(out.shape[0], M, -1).transpose(0, 1)

    def _vmap_forward(self, x: torch.Tensor, shared: bool, train: bool) -> torch.Tensor:
        self.base.train(train)

        def one_model(params, buffers, inputs):
            return torch.func.functional_call(self.base, (params, buffers), (inputs,))

        run = torch.vmap(one_model, in_dims=(0, 0, None if shared else 0), randomness="different")
        return run(self.params, self.buffers | self.rates, x)

    @torch.no_grad()
    def _choose_engine(self, x: torch.Tensor, shared: bool) -> None:
        """"grouped" when its outputs on two inputs match each model's own (eval mode), else "vmap"."""
        probe = x[:2] if shared else x[:, :2]
        if self.grouped is not None:
            try:
                out = self._grouped_forward(probe, shared, train=False)
            except (NotStackable, RuntimeError, TypeError, IndexError):
                out = None
            self.base.eval()
            tensors = self.params | self.buffers | self.rates
            own = torch.stack([
                torch.func.functional_call(self.base, {n: t[k] for n, t in tensors.items()}, (probe if shared else probe[k],))
                for k in range(self.M)
            ])  # fmt: skip
            scale = float(own.abs().nan_to_num(0, 0, 0).max()) + 1.0
            if out is not None and out.shape == own.shape and torch.allclose(out, own, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):
                self.engine = "grouped"
                return
        try:
            self._vmap_forward(probe, shared, train=False)
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:
            raise NotStackable(
                f"{type(self.base).__name__} runs neither grouped nor under torch.vmap ({str(err).splitlines()[0]}); "
                "train these models one at a time: make_population(..., stacked=False) or LoopPopulation"
            ) from err
        self.engine = "vmap"

    def forward(self, x: torch.Tensor, shared: bool = False, train: bool = False) -> torch.Tensor:
        """x [M, B, ...] (each model its own batch) or [B, ...] with shared=True -> logits [M, B, K]."""
        if self.engine == "auto":
            self._choose_engine(x, shared)
        if self.engine == "grouped":
            return self._grouped_forward(x, shared, train)
        return self._vmap_forward(x, shared, train)


class LoopPopulation:
    """The same interface as StackedPopulation, one model after another (any architecture, any mix of
    structures): each model an nn.Module with its own torch.optim optimizer."""

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


def make_population(models: Sequence[nn.Module], settings: Sequence[TrainSettings], stacked: bool = True,
                    example_input: torch.Tensor | None = None):
    """The fastest population that trains the models (all of one structure):

    StackedPopulation for plain Conv / Linear sequences, else FunctionalPopulation (BatchNorm,
    residual blocks, any layers torch.vmap batches), else LoopPopulation; LoopPopulation too with
    stacked=False. `example_input` ([B, ...], e.g. two training inputs) lets the choice between
    FunctionalPopulation and LoopPopulation be made here rather than fail on the first forward.
    """
    if not models:
        raise ValueError("a population needs at least one model")
    if len(settings) != len(models):
        raise ValueError(f"got {len(models)} models but {len(settings)} training settings")
    if not stacked:
        return LoopPopulation(models, settings)
    groups = group_by_structure(models)
    if len(groups) > 1:
        raise ValueError(
            f"the models do not share one structure ({len(groups)} groups: layers other than dropout rates differ, "
            "e.g. the activation): train each group of population.group_by_structure(models) as its own population, "
            "or pass stacked=False to train them one after another"
        )
    try:
        return StackedPopulation(models, settings)
    except NotStackable:
        pass
    try:
        return FunctionalPopulation(models, settings, example_input=example_input)
    except NotStackable:
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
        x, y = task_data.split(split)
        population = make_population([models[i] for i in idx], [TrainSettings() for _ in idx], example_input=x[:2])
        acc[idx] = population.evaluate(x, y)[1].cpu()
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
        population = make_population(group, settings, example_input=task.train_x[:2])
        history = train_population(population, task, epochs, batch_size, progress=progress, desc="fine-tune")
        population.load_into(group)
        for k in history[0]:
            col = torch.stack([h[k] for h in history])
            out.setdefault(k, torch.zeros(epochs + 1, len(models), dtype=col.dtype))[:, idx] = col
    return out
