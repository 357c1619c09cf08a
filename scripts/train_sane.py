"""Train SANE on model zoos; the entry point for `accelerate launch`.

    python scripts/train_sane.py --zoo zoos/mnist-seed --output_dir runs/sane --epochs 20
    accelerate launch --multi_gpu --num_processes 4 scripts/train_sane.py --zoo org/zoo --output_dir runs/sane
    # two CPU processes (gloo); note `--cpu --num_processes 2` would run ONE process:
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no scripts/train_sane.py --zoo zoos/mnist-seed --output_dir runs/sane

Flags and the YAML/JSON --config file are those of `hyperrep train --help`.
"""

from __future__ import annotations

import sys

from hyperrep_hf.training import TrainingDivergedError, parse_training_args, train_sane


def main(argv: list[str] | None = None) -> int:
    try:
        result = train_sane(parse_training_args(argv))
    except (ValueError, FileNotFoundError, TrainingDivergedError) as err:
        print(f"train_sane: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, TrainingDivergedError) else 1
    if result.finished:
        print(f"done: {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
