"""Options of a fine-tuning run of a SANE property head: one dataclass, from a YAML/JSON file and/or flags.

    args = SaneFinetuningArguments(checkpoint="runs/sane", zoo="zoos/mnist-seed", output_dir="runs/head",
                                   properties=["test_acc", "epoch", "ggap"])
    args = parse_finetuning_args(["--checkpoint", "runs/sane", "--zoo", "z", "--output_dir", "o"])
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..configuration_sane import HEAD_POOLINGS
from ..files import read_config_file
from .arguments import RunArguments, _bool, parse_epochs

# Options that may change when a run is resumed: they do not change what the run computes.
RESUMABLE_FIELDS = frozenset({"output_dir", "resume", "overwrite_output_dir", "stop_after_steps", "logging_steps",
                              "save_total_limit", "report_to", "progress", "eval_batch_size", "config"})


@dataclass
class SaneFinetuningArguments(RunArguments):
    """Everything a fine-tuning run needs.

    Data: checkpoint (a SANE folder or Hub id, at `revision`), zoo (a folder or Hub dataset id of
        the architecture the checkpoint was trained on), properties (zoo columns: numeric ones are
        regressions, string ones classifications), zoo_epochs (checkpoints to use, e.g. "1-25";
        default all).
    Head: pooling ("mean" or "layer"), head_hidden_dim (0: linear), head_dropout, freeze_encoder
        (train the head only), statistics_features (the head also reads the s(W) statistics of the raw
        weights, the baseline's features, beside the latents), permutation_augmentation (each training model under a fresh random
        function-preserving permutation of its neurons, every step).
    Optimisation: AdamW, learning_rate for the head and encoder_learning_rate for the encoder,
        weight_decay on matrices, OneCycle schedule (pct_start, cosine), epochs, batch_size models,
        max_grad_norm, mixed_precision ("auto": bf16 where the hardware has it), seed.
    Run: evaluation on validation every epoch; early_stopping_patience epochs without a lower
        validation loss end the run (0: never); the model of the best validation epoch is the
        result. save_total_limit checkpoints kept; stop_after_steps ends early with a checkpoint
        (as a kill would); resume ("last" or a folder); report_to ("tensorboard", ... or "none").
    """
    kind = "fine-tuning"
    resumable = RESUMABLE_FIELDS

    checkpoint: str = ""
    zoo: str = ""
    output_dir: str = ""
    properties: list[str] = field(default_factory=lambda: ["test_acc", "epoch", "ggap"])
    config: str | None = None
    revision: str | None = None
    zoo_epochs: str | None = None
    # head
    pooling: str = "mean"
    head_hidden_dim: int = 0
    head_dropout: float = 0.0
    freeze_encoder: bool = False
    statistics_features: bool = False
    permutation_augmentation: bool = True
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    encoder_learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    pct_start: float = 0.1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"
    seed: int = 0
    # run
    early_stopping_patience: int = 5
    eval_batch_size: int = 64
    save_total_limit: int = 2
    logging_steps: int = 10
    stop_after_steps: int | None = None
    resume: str | None = None
    overwrite_output_dir: bool = False
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    progress: bool = True

    def __post_init__(self):
        self.zoo = str(self.zoo)
        self.checkpoint = str(self.checkpoint)
        for name in ("properties", "report_to"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [p for p in getattr(self, name).split(",") if p])
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first option that is out of range."""
        for name, hint in (("checkpoint", "--checkpoint SANE (a folder from `hyperrep train` or a Hub id)"),
                           ("zoo", "--zoo DIR_OR_HUB_ID"), ("output_dir", "--output_dir OUT")):
            if not getattr(self, name):
                raise ValueError(f"no {name} given: pass {hint}")
        if not self.properties:
            raise ValueError("no properties given: pass --properties COLUMN [COLUMN ...] (e.g. test_acc epoch ggap)")
        if self.pooling not in HEAD_POOLINGS:
            raise ValueError(f"pooling must be one of {list(HEAD_POOLINGS)}, got {self.pooling!r}")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "save_total_limit", "logging_steps",
                     "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("head_hidden_dim", "early_stopping_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be a positive integer, got {self.stop_after_steps!r}")
        for name in ("learning_rate", "encoder_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or unset), got {self.max_grad_norm}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        parse_epochs(self.zoo_epochs)


# -- command line --------------------------------------------------------------------------------

_LIST_FIELDS = {"properties", "report_to"}
_HELP = {
    "checkpoint": "the pretrained SANE: a folder from `hyperrep train` or a Hub id",
    "zoo": "the zoo (folder or Hub dataset id) of the checkpoint's architecture",
    "output_dir": "folder for the fine-tuned model, its checkpoints, metrics, logs and card",
    "properties": "zoo columns to predict (numbers: regression, strings: classification)",
    "config": "YAML/JSON file of options (flags override it)",
    "zoo_epochs": "zoo checkpoints to use, e.g. 1-25 or 0,5,10 (default all)",
    "pooling": "what the head reads: mean (mean token latent) or layer (each layer's mean latent)",
    "head_hidden_dim": "hidden width of the head (0: linear)",
    "freeze_encoder": "train the head only (true/false)",
    "statistics_features": "the head also reads the s(W) statistics of the raw weights (true/false)",
    "permutation_augmentation": "a fresh random neuron permutation of each training model every step (true/false)",
    "learning_rate": "peak learning rate of the head",
    "encoder_learning_rate": "peak learning rate of the encoder",
    "early_stopping_patience": "epochs without a lower validation loss before stopping (0: never)",
    "mixed_precision": "auto (bf16 on a GPU or a CPU with AVX512-BF16/AMX, else none), no, bf16, fp16",
    "resume": "continue from the last checkpoint in --output_dir ('--resume'), or from a checkpoint folder",
    "stop_after_steps": "stop after this many optimizer steps with a checkpoint (resume later)",
    "report_to": "trackers: tensorboard, trackio, ... or none",
}


def _type_of(f) -> Any:
    return {"int": int, "float": float, "int | None": int, "float | None": float}.get(f.type, str)


def add_finetuning_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One flag per option (--name VALUE); every default is None so the config file can fill it."""
    for f in fields(SaneFinetuningArguments):
        flag, help_text = f"--{f.name}", _HELP.get(f.name)
        if f.name == "resume":
            parser.add_argument(flag, nargs="?", const="last", default=None, help=help_text)
        elif f.type in ("bool", bool):
            parser.add_argument(flag, nargs="?", const=True, type=_bool, default=None, metavar="BOOL", help=help_text)
        elif f.name in _LIST_FIELDS:
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_type_of(f), default=None, help=help_text)
    return parser


def finetuning_args_from_namespace(ns: argparse.Namespace) -> SaneFinetuningArguments:
    """Defaults <- config file (--config) <- flags given."""
    given = {f.name: getattr(ns, f.name) for f in fields(SaneFinetuningArguments) if getattr(ns, f.name, None) is not None}
    base = read_config_file(given["config"]) if given.get("config") else {}
    return SaneFinetuningArguments.from_dict(base, **given)


def parse_finetuning_args(argv: list[str] | None = None) -> SaneFinetuningArguments:
    parser = argparse.ArgumentParser(description="Fine-tune a SANE property head on a model zoo.")
    return finetuning_args_from_namespace(add_finetuning_arguments(parser).parse_args(argv))


def read_finetuning_args(path: str | Path) -> SaneFinetuningArguments:
    return SaneFinetuningArguments.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
