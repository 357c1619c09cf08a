"""Fine-tune a SANE property head on a zoo; the entry point for `accelerate launch`.

    python scripts/finetune_sane.py --checkpoint runs/sane --zoo zoos/mnist-seed --output_dir runs/head \
        --properties test_acc epoch ggap
    accelerate launch --multi_gpu --num_processes 4 scripts/finetune_sane.py --checkpoint org/sane --zoo org/zoo ...

Flags and the YAML/JSON --config file are those of `hyperrep finetune --help`.
"""

from __future__ import annotations

import sys

from hyperrep_hf.training import TrainingDivergedError
from hyperrep_hf.training.finetune import finetune_sane, parse_finetuning_args


def main(argv: list[str] | None = None) -> int:
    try:
        result = finetune_sane(parse_finetuning_args(argv))
    except (ValueError, FileNotFoundError, TrainingDivergedError) as err:
        print(f"finetune_sane: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, TrainingDivergedError) else 1
    if result.finished:
        print(f"done: {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
