"""`hyperrep finetune`: fine-tune a SANE property head (SaneForPropertyPrediction) on a zoo.

    hyperrep finetune --checkpoint runs/sane --zoo zoos/mnist-seed --output_dir runs/head --properties test_acc epoch ggap
    accelerate launch scripts/finetune_sane.py --checkpoint ... --zoo ... --output_dir ...   # same flags
"""

from __future__ import annotations

import sys


def _finetune(args) -> int:
    from hyperrep_hf.training import TrainingDivergedError
    from hyperrep_hf.training.finetune import finetune_sane
    from hyperrep_hf.training.finetune_arguments import finetuning_args_from_namespace

    try:
        result = finetune_sane(finetuning_args_from_namespace(args))
    except TrainingDivergedError as err:
        print(f"hyperrep finetune: error: {err}", file=sys.stderr)
        return 1
    if result.finished:
        print(f"fine-tuned for {result.global_step} steps; model, results (eval_results.json) and card in "
              f"{result.output_dir}")
    else:
        print(f"stopped after {result.global_step} steps; continue with --resume (checkpoint {result.last_checkpoint})")
    return 0


def register(subparsers) -> None:
    from hyperrep_hf.training.finetune_arguments import add_finetuning_arguments

    parser = subparsers.add_parser(
        "finetune", help="fine-tune a SANE property head on a zoo (Accelerate)",
        description="Fine-tune a pretrained SANE with a property head on a zoo's train split: the epoch is chosen on "
        "validation (early stopping), test is scored once for the card. Options come from --config FILE (YAML/JSON) "
        "and flags; flags win.")
    add_finetuning_arguments(parser)
    parser.set_defaults(func=_finetune)
