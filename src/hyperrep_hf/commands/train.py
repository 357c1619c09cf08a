"""`hyperrep train`: train a SANE hyper-representation on one or more zoos.

    hyperrep train --zoo zoos/mnist-seed --output_dir runs/sane --preset tiny --epochs 20
    accelerate launch scripts/train_sane.py --zoo ... --output_dir ...   # same flags, several processes
"""

from __future__ import annotations

import sys


def _train(args) -> int:
    from hyperrep_hf.training import TrainingDivergedError, train_sane
    from hyperrep_hf.training.arguments import args_from_namespace

    try:
        result = train_sane(args_from_namespace(args))
    except TrainingDivergedError as err:
        print(f"hyperrep train: error: {err}", file=sys.stderr)
        return 1
    if result.finished:
        print(f"trained SANE for {result.global_step} steps; model, tokenizer and metrics in {result.output_dir}")
    else:
        print(f"stopped after {result.global_step} steps; continue with --resume (checkpoint {result.last_checkpoint})")
    return 0


def register(subparsers) -> None:
    from hyperrep_hf.training.arguments import add_training_arguments

    parser = subparsers.add_parser("train", help="train SANE on model zoos (Accelerate)",
                                   description="Train a SANE hyper-representation on model zoos. Options come from "
                                   "--config FILE (YAML/JSON) and flags; flags win.")
    add_training_arguments(parser)
    parser.set_defaults(func=_train)
