"""Options of a SANE training run: one dataclass, filled from a YAML/JSON file and/or CLI flags.

    args = SaneTrainingArguments(zoo=["zoos/mnist-seed"], output_dir="runs/sane", epochs=20)
    args = SaneTrainingArguments.from_file("train.yaml", epochs=5)      # file, then overrides
    args = parse_training_args(["--config", "train.yaml", "--zoo", "z", "--output_dir", "o"])

Flags given on the command line override the file; the file overrides the defaults.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..configuration_sane import PRESETS
from ..files import read_config_file

# Options that may change when a run is resumed: they do not change what the run computes.
RESUMABLE_FIELDS = frozenset(
    {"output_dir", "resume", "overwrite_output_dir", "stop_after_steps", "logging_steps", "eval_every",
     "save_every", "save_total_limit", "report_to", "progress", "eval_batch_size", "eval_at_start",
     "prefetch_batches"}
)

STATISTICS = ("median", "mean")
# How the two contrastive views of a model are made (METHOD.md §5): each view a random
# function-preserving permutation; the stored model and one permutation of it (SANE's "aligned +
# permuted views" on an aligned zoo); or the stored model twice, the views differing by noise only
# (SANE's released config).
VIEWS = ("permuted-both", "stored-and-permuted", "stored-both")
# Layer-wise loss normalisation: off; by the spread of layer l's training tokens; or as published,
# by the spread of layer l's raw training weights (see ZooData.token_statistics).
LAYER_LOSS_NORMS = ("none", "standardized", "raw")

# Named settings of the method's choices. An option given explicitly (flag, file, argument) wins
# over its recipe's value. "default" is this library's CPU-friendly choice (robust median statistics,
# soft clip, exploded checkpoints left out, both views permuted); "published" is SANE as published
# (METHOD.md §3-§5): mean statistics without a clip, every checkpoint kept, the zoo aligned to one
# reference, views = the stored (aligned) model and a random permutation of it, LWLN by the raw
# weights' spread. Sizes and optimisation (preset, learning_rate, epochs) are not part of a recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"statistics": "median", "soft_clip": 4.0, "drop_exploded": True, "views": "permuted-both",
                "align": False, "layer_loss_norm": "standardized"},
    "published": {"statistics": "mean", "soft_clip": "none", "drop_exploded": False, "views": "stored-and-permuted",
                  "align": True, "layer_loss_norm": "raw"},
}


class RunArguments:
    """The file side of a run's options dataclass: a JSON record, read back with the names checked, and
    the options a resumed run must share. Subclasses name their kind and `resumable` options."""

    kind = "training"
    resumable = RESUMABLE_FIELDS | {"config"}  # may differ between a run and its resumption

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict, **overrides):
        known = {f.name for f in fields(cls)}
        merged = {**d, **overrides}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown {cls.kind} options {unknown}; valid options: {sorted(known)}")
        return cls(**merged)

    @classmethod
    def from_file(cls, path: str | Path, **overrides):
        """Options from a .yaml/.yml or .json file, then `overrides`."""
        return cls.from_dict(read_config_file(path), **overrides)

    def differences(self, other: RunArguments) -> dict[str, tuple]:
        """Options (outside `resumable`) whose values differ: {name: (self, other)}."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b.get(k)) for k in a if k not in self.resumable and a[k] != b.get(k)}


@dataclass
class SaneTrainingArguments(RunArguments):
    """Everything a SANE training run needs. Defaults follow the published SANE recipe (METHOD.md
    §2-§5) where that recipe fits a CPU; model sizes come from `preset`.

    Data:
        zoo: one or more zoo folders or Hub dataset ids (several zoos: several architectures, one
            token size).
        zoo_epochs: which checkpoints (zoo `epoch` column) to train on, e.g. "1-25" or "0,5,10";
            None = all.
        token_size: values per token, or "auto" (the longest row of the architecture, capped at 288).
        recipe: "default" or "published" (see RECIPES): fills every option below marked (recipe)
            that is not given explicitly, so an ablation against the paper is one flag.
        standardize: per-layer standardisation of the tokens, fitted on the train split only.
        statistics (recipe): how the standardisation pools the models' per-layer moments, "median"
            or "mean" (published).
        soft_clip (recipe): c of the soft clip c * asinh(z / c) of standardised values, or "none".
        drop_exploded (recipe): leave checkpoints whose RMS weight exceeds 20x the train split's
            median out of the TRAIN split (validation and test are always used whole).
        align (recipe): align every checkpoint of the zoo to one reference model (the last
            checkpoint of the first train model) by weight matching before training (METHOD.md §3).
            The reference is saved with the tokenizer, so embedding and sampling align new models
            the same way. Refused with views "permuted-both", which would permute the alignment away.
    Model:
        preset: a SaneConfig preset ("tiny", "cnn", "resnet18"); d_model, num_layers, num_heads,
            latent_dim, window_size, dropout override it when given.
        gamma: weight of the contrastive loss (reconstruction gets 1 - gamma); temperature: NT-Xent tau.
        layer_loss_norm (recipe): layer-wise loss normalisation (LWLN), "none", "standardized" (the
            spread of each layer's training tokens) or "raw" (published: the spread of each layer's
            raw training weights); see ZooData.token_statistics. true / false read as
            "standardized" / "none".
    Augmentation (both views share one random window):
        views (recipe): "permuted-both" (each view a random function-preserving permutation),
            "stored-and-permuted" (the stored model and one permutation of it) or "stored-both"
            (the stored model twice, differing only by noise). permute_views true / false is the
            older spelling of "permuted-both" / "stored-both".
        multiplicative_noise / additive_noise: sigma of x * (1 + s N(0,1)) / x + s N(0,1) per view.
        erase_probability: chance per view of zeroing one contiguous block of 2-33% of the values.
    Optimisation:
        AdamW(learning_rate, weight_decay on >= 2-d parameters only), OneCycle (pct_start, cosine),
        batch_size models per process and step (two views each), gradient_accumulation_steps,
        max_grad_norm (None: no clipping), mixed_precision "auto" (bf16 on a GPU and on a CPU with
        AVX512-BF16/AMX, else none), "no", "bf16" or "fp16"; prefetch_batches: batches built ahead
        in a background thread (0: none).
    Run:
        eval_every / save_every: epochs between evaluations / checkpoints; logging_steps: optimizer
        steps between training log lines; stop_after_steps: end after this many optimizer steps
        with a checkpoint, as an interruption would (the schedule still spans all epochs);
        resume: "last" or a checkpoint folder; report_to: "tensorboard", "trackio", ... or "none".
    """

    zoo: list[str] = field(default_factory=list)
    output_dir: str = ""
    config: str | None = None
    # data
    zoo_epochs: str | None = None
    token_size: int | str = "auto"
    recipe: str = "default"
    standardize: bool = True
    statistics: str | None = None
    soft_clip: float | str | None = None
    drop_exploded: bool | None = None
    align: bool | None = None
    # model
    preset: str = "tiny"
    d_model: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    latent_dim: int | None = None
    window_size: int | None = None
    dropout: float | None = None
    gamma: float = 0.05
    temperature: float = 0.1
    layer_loss_norm: str | bool | None = None
    # augmentation
    views: str | None = None
    permute_views: bool | None = None
    multiplicative_noise: float = 0.1
    additive_noise: float = 0.0
    erase_probability: float = 0.0
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 3e-9
    pct_start: float = 0.3
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: str = "auto"
    seed: int = 0
    prefetch_batches: int = 2
    # run
    eval_every: int = 1
    eval_at_start: bool = False
    eval_batch_size: int = 64
    probe_properties: list[str] = field(default_factory=lambda: ["test_acc", "epoch", "ggap"])
    save_every: int = 1
    save_total_limit: int = 2
    logging_steps: int = 10
    stop_after_steps: int | None = None
    resume: str | None = None
    overwrite_output_dir: bool = False
    report_to: list[str] = field(default_factory=lambda: ["tensorboard", "trackio"])
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.zoo, (str, Path)):
            self.zoo = [str(self.zoo)]
        self.zoo = [str(z) for z in self.zoo]
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if isinstance(self.probe_properties, str):
            self.probe_properties = [p for p in self.probe_properties.split(",") if p]
        if isinstance(self.token_size, str) and self.token_size != "auto":
            if not self.token_size.isdigit():
                raise ValueError(f"token_size must be a positive integer or 'auto', got {self.token_size!r}")
            self.token_size = int(self.token_size)
        self._apply_recipe()
        self.validate()

    def _apply_recipe(self) -> None:
        """Fill the recipe's options that were not given; normalise their spellings."""
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)}")
        if self.permute_views is not None:
            legacy = "permuted-both" if self.permute_views else "stored-both"
            if self.views is not None and self.views != legacy:
                raise ValueError(f"permute_views={self.permute_views} and views={self.views!r} disagree; "
                                 f"give only --views ({', '.join(VIEWS)})")
            self.views, self.permute_views = legacy, None
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if isinstance(self.layer_loss_norm, bool):
            self.layer_loss_norm = "standardized" if self.layer_loss_norm else "none"
        elif str(self.layer_loss_norm).lower() in ("true", "false"):
            self.layer_loss_norm = "standardized" if str(self.layer_loss_norm).lower() == "true" else "none"
        if isinstance(self.soft_clip, str) and self.soft_clip.lower() != "none":
            try:
                self.soft_clip = float(self.soft_clip)
            except ValueError:
                raise ValueError(f"soft_clip must be a positive number or 'none', got {self.soft_clip!r}") from None
        elif isinstance(self.soft_clip, str):
            self.soft_clip = "none"
        elif isinstance(self.soft_clip, int) and not isinstance(self.soft_clip, bool):
            self.soft_clip = float(self.soft_clip)

    @property
    def tokenizer_soft_clip(self) -> float | None:
        """soft_clip as WeightTokenizer takes it (None: no clip)."""
        return None if self.soft_clip == "none" else float(self.soft_clip)

    def validate(self) -> None:
        """Raise a ValueError naming the first option that is out of range."""
        if not self.zoo:
            raise ValueError("no zoo given: pass --zoo DIR_OR_HUB_ID (a folder from `hyperrep zoo build` or a Hub dataset id)")
        if not self.output_dir:
            raise ValueError("no output folder given: pass --output_dir OUT")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "eval_every", "save_every",
                     "save_total_limit", "logging_steps", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.prefetch_batches, bool) or not isinstance(self.prefetch_batches, int) or self.prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be an integer >= 0, got {self.prefetch_batches!r}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be a positive integer, got {self.stop_after_steps!r}")
        if self.token_size != "auto" and (isinstance(self.token_size, bool) or self.token_size < 1):
            raise ValueError(f"token_size must be a positive integer or 'auto', got {self.token_size!r}")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if not 0.0 <= self.erase_probability <= 1.0:
            raise ValueError(f"erase_probability must be in [0, 1], got {self.erase_probability}")
        if self.multiplicative_noise < 0 or self.additive_noise < 0:
            raise ValueError("noise sigmas must be >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or unset), got {self.max_grad_norm}")
        if self.statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {list(STATISTICS)}, got {self.statistics!r}")
        if self.soft_clip != "none" and (isinstance(self.soft_clip, bool) or not isinstance(self.soft_clip, float)
                                         or not self.soft_clip > 0):
            raise ValueError(f"soft_clip must be a positive number or 'none', got {self.soft_clip!r}")
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {list(VIEWS)}, got {self.views!r}")
        if self.layer_loss_norm not in LAYER_LOSS_NORMS:
            raise ValueError(f"layer_loss_norm must be one of {list(LAYER_LOSS_NORMS)}, got {self.layer_loss_norm!r}")
        for name in ("align", "drop_exploded"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.align and self.views == "permuted-both":
            raise ValueError("--align true with --views permuted-both permutes both views of every aligned model at "
                             "random, which throws the alignment away; use --views stored-and-permuted (SANE's aligned + "
                             "permuted views) or --views stored-both, or --align false")
        parse_epochs(self.zoo_epochs)


def parse_epochs(spec) -> list[int] | None:
    """"1-25" / "0,5,10" / "0-3,7" / [1, 2] / None -> sorted epochs (None = all)."""
    if spec is None or spec == "" or spec == "all":
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [spec]
    if isinstance(spec, (list, tuple)):
        parts = [str(s) for s in spec]
    else:
        parts = str(spec).split(",")
    epochs: set[int] = set()
    try:
        for part in parts:
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                epochs.update(range(lo, hi + 1))
            else:
                epochs.add(int(part))
    except ValueError:
        raise ValueError(f"zoo_epochs {spec!r} is not a list of epochs like '1-25' or '0,5,10'") from None
    return sorted(epochs)


# -- command line --------------------------------------------------------------------------------

_BOOL_FIELDS = {f.name for f in fields(SaneTrainingArguments) if f.type in ("bool", bool, "bool | None")}
_LIST_FIELDS = {"zoo", "probe_properties", "report_to"}
_HELP = {
    "zoo": "zoo folder(s) or Hub dataset id(s)",
    "output_dir": "folder for the model, tokenizer, checkpoints, metrics and logs",
    "config": "YAML/JSON file of options (flags override it)",
    "zoo_epochs": "zoo checkpoints to train on, e.g. 1-25 or 0,5,10 (default all)",
    "token_size": "values per token or 'auto'",
    "recipe": "default (this library's choices) or published (SANE as published: --statistics mean --soft_clip none "
    "--drop_exploded false --align true --views stored-and-permuted --layer_loss_norm raw); flags given win",
    "statistics": "per-layer standardisation statistics: median or mean (published)",
    "soft_clip": "soft clip c of standardised tokens (c * asinh(z / c)) or none (published)",
    "drop_exploded": "leave exploded checkpoints (RMS > 20x the median) out of the train split (true/false)",
    "views": f"contrastive views: {', '.join(VIEWS)}",
    "preset": f"SANE size preset: {', '.join(PRESETS)}",
    "window_size": "tokens per training window (default: the preset's)",
    "gamma": "weight of the contrastive loss",
    "temperature": "NT-Xent temperature",
    "layer_loss_norm": "layer-wise loss normalisation: none, standardized (spread of each layer's training tokens) "
    "or raw (published: spread of each layer's raw training weights)",
    "align": "align the zoo to one reference model by weight matching (true/false); needs --views "
    "stored-and-permuted or stored-both (SANE's released setting: aligned model twice, noise only)",
    "permute_views": "older spelling: true = --views permuted-both, false = --views stored-both",
    "mixed_precision": "auto (bf16 on a GPU or a CPU with AVX512-BF16/AMX, else none), no, bf16, fp16",
    "resume": "continue from the last checkpoint in --output_dir ('--resume'), or from a checkpoint folder",
    "stop_after_steps": "stop after this many optimizer steps with a checkpoint (resume later)",
    "report_to": "trackers: tensorboard, trackio, ... or none",
}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _type_of(name: str):
    return {"int": int, "float": float, "int | None": int, "float | None": float}.get(
        next(f.type for f in fields(SaneTrainingArguments) if f.name == name), str)


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One flag per option (--name VALUE); every default is None so the config file can fill it."""
    for f in fields(SaneTrainingArguments):
        flag = f"--{f.name}"
        help_text = _HELP.get(f.name)
        if f.name == "resume":
            parser.add_argument(flag, nargs="?", const="last", default=None, help=help_text)
        elif f.name in _BOOL_FIELDS:
            parser.add_argument(flag, nargs="?", const=True, type=_bool, default=None, metavar="BOOL", help=help_text)
        elif f.name in _LIST_FIELDS:
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_type_of(f.name), default=None, help=help_text)
    return parser


def args_from_namespace(ns: argparse.Namespace) -> SaneTrainingArguments:
    """Defaults <- config file (--config) <- flags given."""
    given = {f.name: getattr(ns, f.name) for f in fields(SaneTrainingArguments) if getattr(ns, f.name, None) is not None}
    base = read_config_file(given["config"]) if given.get("config") else {}
    return SaneTrainingArguments.from_dict(base, **given)


def parse_training_args(argv: list[str] | None = None) -> SaneTrainingArguments:
    parser = argparse.ArgumentParser(description="Train a SANE hyper-representation on model zoos.")
    return args_from_namespace(add_training_arguments(parser).parse_args(argv))
