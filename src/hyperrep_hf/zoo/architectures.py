"""Architectures of model zoos, in a registry with the names users type (`cnn-s`, `resnet18`).

Every architecture is a function `(**kwargs) -> nn.Module` registered under a name. The module's
state_dict names are stable: zoo rows store weights flattened in state_dict order, so a row plus
its architecture name and arguments rebuild a working model.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}

INITS = ("default", "uniform", "normal", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str):
    """Decorator: make `fn(**kwargs) -> nn.Module` available as `build_model(name, ...)`."""

    def wrap(fn):
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHITECTURES[name] = fn
        return fn

    return wrap


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


@register_architecture("cnn-s")
def cnn_s(in_channels: int = 1, num_classes: int = 10, activation: str = "tanh", dropout: float = 0.0) -> nn.Module:
    """The Model Zoos CNN-s for 28x28 inputs: 2,464 parameters (1 input channel), 2,864 (3).

    Dropout as in the Model Zoos network: after conv blocks 1 and 2 and after the first linear
    layer; the modules are there at p=0 too, so the state_dict keys are 0, 4, 8, 11, 14 whatever
    the rate. Input [batch, in_channels, 28, 28] -> logits [batch, num_classes].
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 5),
        nn.MaxPool2d(2),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Conv2d(8, 6, 5),
        nn.MaxPool2d(2),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Conv2d(6, 4, 2),
        _activation(activation),
        nn.Flatten(),
        nn.Linear(36, 20),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Linear(20, num_classes),
    )


@register_architecture("cnn-l")
def cnn_l(in_channels: int = 3, num_classes: int = 10, activation: str = "gelu", dropout: float = 0.0) -> nn.Module:
    """The Model Zoos CNN-l for 32x32 inputs: 10,853 parameters (3 input channels, 10 classes).

    Dropout as in the Model Zoos network: after each of the three conv blocks and after the first
    linear layer; state_dict keys 0, 4, 8, 13, 16 whatever the rate.
    Input [batch, in_channels, 32, 32] -> logits [batch, num_classes].
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3),
        nn.MaxPool2d(2),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Conv2d(16, 32, 3),
        nn.MaxPool2d(2),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Conv2d(32, 15, 3),
        nn.MaxPool2d(2),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(60, 20),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Linear(20, num_classes),
    )


@register_architecture("cnn-smallzoo")
def cnn_smallzoo(in_channels: int = 1, num_classes: int = 10, activation: str = "relu", dropout: float = 0.0) -> nn.Module:
    """The CNN of the Small CNN Zoo (Unterthiner et al. 2020): 4,970 parameters (1 input channel).

    Three Conv2d(16, 3x3, stride 2, no padding) each with its activation and dropout, global
    average pooling, Linear(16, num_classes) logits. Input [batch, in_channels, H, W] (28x28 or
    32x32 grayscale in [-1, 1]) -> logits [batch, num_classes]. The Dropout modules are always
    there (p=0 when unused), so state_dict names do not depend on the dropout rate.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(3):
        layers += [nn.Conv2d(c, 16, 3, stride=2), _activation(activation), nn.Dropout(dropout)]
        c = 16
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


@register_architecture("transformers")
def transformers_model(config: dict) -> nn.Module:
    """A transformers model built from its config.json (a dict): the class named in
    `config["architectures"]` when transformers has it, else AutoModel.from_config."""
    cls, cfg = transformers_class(config)
    return cls(cfg).eval()


def transformers_class(config: dict):
    """(model class, PretrainedConfig) of a config.json dict: the class its `architectures` names
    when transformers has it, else the AutoModel class of its model_type."""
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    names = config.get("architectures") or []
    cls = getattr(transformers, names[0], None) if names else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = transformers.AutoModel._model_mapping[type(cfg)]
    return cls, cfg


@register_architecture("cnn-digits")
def cnn_digits(in_channels: int = 1, num_classes: int = 10, activation: str = "tanh", dropout: float = 0.0) -> nn.Module:
    """A small CNN for scikit-learn's 8x8 digits, shaped like CNN-s: 988 parameters.

    Input [batch, in_channels, 8, 8] -> logits [batch, num_classes].
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3),
        nn.MaxPool2d(2),
        _activation(activation),
        nn.Dropout(dropout),
        nn.Conv2d(8, 6, 2),
        _activation(activation),
        nn.Flatten(),
        nn.Linear(24, 20),
        _activation(activation),
        nn.Linear(20, num_classes),
    )


@register_architecture("mlp")
def mlp(
    in_features: int = 784,
    hidden: tuple[int, ...] | list[int] = (32, 32),
    num_classes: int = 10,
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """A plain MLP on flattened inputs: [batch, *] -> [batch, num_classes]."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), _activation(activation), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BatchNorm and an identity or 1x1 shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, no max-pool, four stages of BasicBlocks, global average pool."""

    def __init__(self, num_blocks=(2, 2, 2, 2), in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes, in_planes, stages = width, width, []
        for i, n in enumerate(num_blocks):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
            planes *= 2
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


@register_architecture("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Module:
    """ResNet-18 (BasicBlock, 3x3 stem, no max-pool): 11,173,962 parameters for 10 classes.

    The Model Zoos ResNet-18 (torchvision's ResNet with conv1 = Conv2d(c, 64, 3, 1, 1, bias=False)
    and maxpool = Identity) computes the same function with its tensors in the same order, so its
    checkpoints (torchvision names: downsample, fc) import by order and shape.
    """
    return ResNet((2, 2, 2, 2), in_channels, num_classes, width)


@register_architecture("vgg-s")
def vgg_s(in_channels: int = 3, num_classes: int = 10, widths=(16, 32, 64), batch_norm: bool = True) -> nn.Module:
    """A small VGG-style net for 32x32 inputs: [conv3x3 -> BN -> ReLU -> maxpool] per width, then FC."""
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        layers.append(nn.Conv2d(c, w, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(w))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c = w
    side = 32 // 2 ** len(widths)
    layers += [nn.Flatten(), nn.Linear(c * side * side, 64), nn.ReLU(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def is_builder_reference(name: str | None) -> bool:
    """True for "package.module:builder" (a callable to import), False for a registered name."""
    return isinstance(name, str) and ":" in name


def import_builder(reference: str) -> Callable[..., nn.Module]:
    """Import the callable of "package.module:builder". Standard-library modules are refused: a zoo
    names its builder in zoo_config.json, and a stdlib callable is never a model builder."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ValueError(f"architecture {reference!r}: expected package.module:builder (a callable returning an nn.Module)")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise ValueError(f"architecture {reference!r}: {module_name} is a standard-library module, not a model builder")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raises while importing
        raise ValueError(
            f"architecture {reference!r}: cannot import {module_name} ({type(err).__name__}: {err}); install it or put it on PYTHONPATH"
        ) from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"architecture {reference!r}: {module_name} has no callable {attr!r}")
    return fn


def trust_builder(reference: str) -> Callable[..., nn.Module]:
    """Import the builder "package.module:builder" and register it under that name, so zoos that name
    it build their models. A zoo only names its builder: code outside hyperrep_hf runs once you trust
    it here (`hyperrep zoo import --architecture REFERENCE` trusts the builder you give it)."""
    if reference not in ARCHITECTURES:
        ARCHITECTURES[reference] = import_builder(reference)
    return ARCHITECTURES[reference]


def architecture_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of a registered architecture name or of a trusted "package.module:builder"."""
    if name is None:
        raise ValueError("this zoo has no architecture (it was imported as state_dicts): import it again with --architecture NAME or package.module:builder")
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if is_builder_reference(name):
        raise ValueError(
            f"architecture {name!r} is code outside hyperrep_hf that the zoo names; a zoo does not run code by "
            f"itself: once you trust it, call hyperrep_hf.zoo.trust_builder({name!r})"
        )
    raise ValueError(f"unknown architecture {name!r}; registered: {sorted(ARCHITECTURES)} (or give package.module:builder)")


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture by name, e.g. `build_model("cnn-s", activation="gelu")`, or
    call a builder given as "package.module:builder" with `kwargs`."""
    model = architecture_builder(name)(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"architecture {name!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def architecture_kwargs_for_row(architecture: str, base_kwargs: dict, row: Mapping | None) -> dict:
    """build_model arguments for a row: the zoo's kwargs plus the row's activation / dropout."""
    kw = dict(base_kwargs)
    if row is not None:
        accepted = inspect.signature(architecture_builder(architecture)).parameters
        for key in ("activation", "dropout"):
            if key in accepted and row.get(key) is not None:
                kw[key] = row[key]
    return kw


def init_weights(model: nn.Module, method: str = "default", generator: torch.Generator | None = None, bias: float = 0.01) -> nn.Module:
    """Initialise conv and linear layers in place, as in the Model Zoos: biases filled with `bias`,
    weights by `method` (one of INITS; "uniform" is U(0,1), "normal" N(0,1), "kaiming_uniform"
    torch's kaiming_uniform_ with its default a = 0: U(-b, b), b = sqrt(6 / fan_in), as the Model
    Zoos). "default" keeps PyTorch's own layer initialisation (weights kaiming_uniform_ with
    a = sqrt(5), b = 1 / sqrt(fan_in), 2.45x narrower; biases U(-b, b)). BatchNorm layers keep
    weight 1, bias 0."""
    if method not in INITS:
        raise ValueError(f"unknown init {method!r}; choose one of {list(INITS)}")
    if method == "default":
        return model
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            w = m.weight
            if method == "uniform":
                w.uniform_(0.0, 1.0, generator=generator)
            elif method == "normal":
                w.normal_(0.0, 1.0, generator=generator)
            elif method == "kaiming_uniform":
                nn.init.kaiming_uniform_(w, generator=generator)
            elif method == "kaiming_normal":
                nn.init.kaiming_normal_(w, generator=generator)
            elif method == "xavier_uniform":
                nn.init.xavier_uniform_(w, generator=generator)
            elif method == "xavier_normal":
                nn.init.xavier_normal_(w, generator=generator)
            if m.bias is not None:
                m.bias.fill_(bias)
    return model


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())
