"""What a zoo holds: architecture, task, hyperparameter grid or random sample, seeds, epochs.

A `ZooSpec` comes from a preset name (`mnist-seed`), a YAML/JSON file or a dict, and expands into
one `ModelSpec` per model. Model i gets seed `spec.seed + i` and, for a grid, grid point i mod G,
so `num_models` shrinks or grows a zoo while keeping its spread of settings.
"""

from __future__ import annotations

import inspect
import itertools
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..files import read_config_file
from .architectures import ACTIVATIONS, ARCHITECTURES, INITS, build_model
from .population import OPTIMIZERS, TrainSettings
from .tasks import check_task, task_label

# Every hyperparameter a model of a zoo has; each becomes a column of the zoo dataset.
DEFAULT_HYPERPARAMETERS: dict = {
    "activation": "tanh",
    "init": "kaiming_uniform",
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "dropout": 0.0,
    "momentum": 0.9,
}
# The hyperparameters that are arguments of the architecture (the rest configure training).
ARCHITECTURE_HYPERPARAMETERS = ("activation", "dropout")
SPLIT_NAMES = ("train", "validation", "test")

PRESETS: dict[str, dict] = {
    "mnist-seed": {
        "description": "CNN-s seed zoo on mnist-5k: only the seed varies. Unlike the published MNIST seed "
        "zoo (tanh, U(0,1) init, Adam 3e-4), it uses kaiming_uniform init, because U(0,1) stays near "
        "chance on 4,000 training images.",
        "architecture": "cnn-s",
        "task": "mnist-5k",
        "hyperparameters": {"activation": ["tanh"], "init": ["kaiming_uniform"], "optimizer": ["adam"], "lr": [3e-4], "weight_decay": [0.0]},
        "num_models": 100,
        "epochs": 15,
    },
    "mnist-hyp": {
        "description": "CNN-s hyperparameter zoo on mnist-5k: activation x init x optimizer x lr x weight "
        "decay x dropout, a random sample of the published grid (U(0,1) and N(0,1) inits included: "
        "they give the zoo its near-chance models), one seed per model.",
        "architecture": "cnn-s",
        "task": "mnist-5k",
        "search": "random",
        "hyperparameters": {
            "activation": ["tanh", "relu", "sigmoid", "gelu"],
            "init": ["uniform", "normal", "kaiming_uniform", "kaiming_normal", "xavier_uniform"],
            "optimizer": ["adam", "sgd"],
            "lr": [1e-3, 1e-4],
            "weight_decay": [1e-3, 1e-4],
            "dropout": [0.0, 0.5],
        },
        "num_models": 120,
        "epochs": 15,
    },
    "digits-seed": {
        "description": "Small seed zoo of the digits CNN on scikit-learn digits (tests, quick experiments).",
        "architecture": "cnn-digits",
        "task": "digits",
        "hyperparameters": {"activation": ["tanh"], "init": ["kaiming_uniform"], "optimizer": ["adam"], "lr": [1e-3]},
        "num_models": 50,
        "epochs": 10,
    },
    "digits-hyp": {
        "description": "Small hyperparameter zoo of the digits CNN on scikit-learn digits.",
        "architecture": "cnn-digits",
        "task": "digits",
        "search": "random",
        "hyperparameters": {
            "activation": ["tanh", "relu", "gelu"],
            "init": ["uniform", "kaiming_uniform", "xavier_uniform"],
            "optimizer": ["adam", "sgd", "adamw"],
            "lr": [1e-2, 1e-3],
            "weight_decay": [0.0, 1e-3],
            "dropout": [0.0, 0.3],
        },
        "num_models": 60,
        "epochs": 10,
    },
}


@dataclass
class ModelSpec:
    """One model of a zoo: its id, split and hyperparameters."""

    model_id: int
    split: str
    seed: int
    hyperparameters: dict

    @property
    def settings(self) -> TrainSettings:
        hp = self.hyperparameters
        return TrainSettings(seed=self.seed, optimizer=hp["optimizer"], lr=hp["lr"], weight_decay=hp["weight_decay"], momentum=hp["momentum"])


@dataclass
class ZooSpec:
    """A zoo's generating configuration (see the module docstring)."""

    architecture: str
    task: str | dict = "mnist-5k"  # a task name (built-in or registered) or a task mapping (zoo.tasks)
    name: str = "zoo"
    description: str = ""
    architecture_kwargs: dict = field(default_factory=dict)
    task_kwargs: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    search: str = "grid"
    num_models: int | None = None
    seeds_per_config: int = 1
    seed: int = 0
    epochs: int = 10
    checkpoint_epochs: list[int] | None = None
    batch_size: int = 10
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    population_size: int = 64

    def __post_init__(self):
        self.hyperparameters = {k: v if isinstance(v, list | tuple) else [v] for k, v in self.hyperparameters.items()}
        self.hyperparameters = {k: list(v) for k, v in self.hyperparameters.items()}
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        # a mapping gets its defaults and an absolute local folder, so the zoo records a task that loads anywhere
        self.task = check_task(self.task)
        self.validate()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> ZooSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown zoo config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str) -> ZooSpec:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({"name": name, **PRESETS[name]})

    @classmethod
    def from_file(cls, path: str | Path) -> ZooSpec:
        d = read_config_file(path)
        d.setdefault("name", Path(path).stem)
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    # -- checks -----------------------------------------------------------------------------------
    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; registered: {sorted(ARCHITECTURES)}")
        check_task(self.task)
        unknown = sorted(set(self.hyperparameters) - set(DEFAULT_HYPERPARAMETERS))
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; valid: {sorted(DEFAULT_HYPERPARAMETERS)}")
        allowed = {"activation": ACTIVATIONS, "init": INITS, "optimizer": OPTIMIZERS}
        for key, valid in allowed.items():
            for v in self.hyperparameters.get(key, []):
                if v not in valid:
                    raise ValueError(f"unknown {key} {v!r}; choose one of {sorted(valid)}")
        if any(len(v) == 0 for v in self.hyperparameters.values()):
            raise ValueError("every hyperparameter needs at least one value")
        if self.search not in ("grid", "random"):
            raise ValueError(f"search must be 'grid' or 'random', got {self.search!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.population_size < 1:
            raise ValueError("epochs must be >= 0, batch_size and population_size >= 1")
        n = self.total_models
        if n < 3:
            raise ValueError(f"a zoo needs at least 3 models (one per split), got {n}")
        if abs(sum(self.split_fractions) - 1) > 1e-6 or len(self.split_fractions) != 3:
            raise ValueError(f"split_fractions must be 3 numbers summing to 1, got {list(self.split_fractions)}")
        accepted = self.architecture_parameters()
        for key in ARCHITECTURE_HYPERPARAMETERS:
            if len(self.hyperparameters.get(key, [])) > 1 and key not in accepted:
                raise ValueError(f"architecture {self.architecture!r} has no {key!r} argument, so {key} cannot vary")

    def architecture_parameters(self) -> set[str]:
        return set(inspect.signature(ARCHITECTURES[self.architecture]).parameters)

    # -- expansion --------------------------------------------------------------------------------
    @property
    def grid(self) -> list[dict]:
        keys = sorted(self.hyperparameters)
        combos = itertools.product(*(self.hyperparameters[k] for k in keys))
        return [{**DEFAULT_HYPERPARAMETERS, **dict(zip(keys, c))} for c in combos]

    @property
    def total_models(self) -> int:
        if self.num_models is not None:
            return int(self.num_models)
        return len(self.grid) * self.seeds_per_config

    @property
    def varied(self) -> list[str]:
        """Names of the hyperparameters that take more than one value (the seed always varies)."""
        return ["seed"] + sorted(k for k, v in self.hyperparameters.items() if len(set(map(str, v))) > 1)

    @property
    def checkpoints(self) -> list[int]:
        if self.checkpoint_epochs is None:
            return list(range(self.epochs + 1))
        bad = [e for e in self.checkpoint_epochs if not 0 <= e <= self.epochs]
        if bad:
            raise ValueError(f"checkpoint_epochs {bad} lie outside 0..{self.epochs}")
        return sorted(set(self.checkpoint_epochs))

    def models(self) -> list[ModelSpec]:
        n, grid = self.total_models, self.grid
        rng = random.Random(self.seed)
        if self.search == "random":
            points = [{**DEFAULT_HYPERPARAMETERS, **{k: rng.choice(v) for k, v in sorted(self.hyperparameters.items())}} for _ in range(n)]
        else:
            points = [grid[i % len(grid)] for i in range(n)]
        splits = split_by_model(n, self.split_fractions, self.seed)
        return [ModelSpec(i, splits[i], self.seed + i, points[i]) for i in range(n)]

    def architecture_kwargs_for(self, task_input_shape: tuple[int, ...], num_classes: int, hyperparameters: dict | None = None) -> dict:
        """Arguments of build_model for this task (in_channels / in_features / num_classes filled in)."""
        accepted = self.architecture_parameters()
        kw = dict(self.architecture_kwargs)
        if "in_channels" in accepted:
            kw.setdefault("in_channels", int(task_input_shape[0]))
        if "in_features" in accepted:
            kw.setdefault("in_features", int(np.prod(task_input_shape)))
        if "num_classes" in accepted:
            kw.setdefault("num_classes", int(num_classes))
        for key in ARCHITECTURE_HYPERPARAMETERS:
            if hyperparameters is not None and key in accepted:
                kw[key] = hyperparameters[key]
        return kw

    def check_fits(self, task_input_shape, num_classes) -> None:
        """Raise a clear error when the architecture cannot take the task's inputs."""
        import torch

        kw = self.architecture_kwargs_for(task_input_shape, num_classes)
        try:
            out = build_model(self.architecture, **kw).eval()(torch.zeros(2, *task_input_shape))
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"architecture {self.architecture!r} ({kw}) does not take inputs of shape {list(task_input_shape)} "
                f"of task {task_label(self.task)!r}: {str(err).splitlines()[0]}"
            ) from err
        if out.shape[-1] != num_classes:
            raise ValueError(f"architecture {self.architecture!r} gives {out.shape[-1]} outputs; task {task_label(self.task)!r} has {num_classes} classes")


def split_by_model(n: int, fractions, seed: int) -> list[str]:
    """A fixed split name per model index: every split gets at least one model (n >= 3)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["validation"] * n_val + ["test"] * n_test
    out = [""] * n
    for pos, i in enumerate(order):
        out[i] = names[pos]
    return out


def resolve_spec(preset_or_spec, num_models: int | None = None, epochs: int | None = None, **overrides) -> ZooSpec:
    """A ZooSpec from a preset name, a YAML/JSON path, a dict or a ZooSpec, with overrides applied."""
    if isinstance(preset_or_spec, ZooSpec):
        d = preset_or_spec.to_dict()
    elif isinstance(preset_or_spec, dict):
        d = dict(preset_or_spec)
    elif isinstance(preset_or_spec, str | Path) and Path(preset_or_spec).suffix in (".yaml", ".yml", ".json"):
        d = ZooSpec.from_file(preset_or_spec).to_dict()
    elif isinstance(preset_or_spec, str):
        d = ZooSpec.from_preset(preset_or_spec).to_dict()
    else:
        raise ValueError(f"expected a preset name, a config path, a dict or a ZooSpec, got {type(preset_or_spec).__name__}")
    if num_models is not None:
        d["num_models"] = int(num_models)
    if epochs is not None:
        d["epochs"] = int(epochs)
    d.update({k: v for k, v in overrides.items() if v is not None})
    return ZooSpec.from_dict(d)
