"""Benchmark: a fine-tuning epoch of a SANE property head vs a SANE pretraining epoch on the same zoo.

    python scripts/bench_finetune.py                             # builds a 20-model digits zoo in a temp folder
    python scripts/bench_finetune.py --zoo zoos/mnist-seed --json bench.json   # the issue's 100-model seed zoo

The goal (issue #19): a fine-tuning epoch within 2x the time of a pretraining epoch. Measured in one
run on one zoo with one SANE (the tiny preset unless --preset): the baseline is the second epoch of
`hyperrep train` (the first warms up), the variants the second epoch of `hyperrep finetune` from that
SANE on test_acc, epoch and ggap (encoder + head with permutation augmentation, the default; the head
alone; no augmentation). An epoch's time is the sum of its optimizer steps' times (data waits
included, evaluations excluded: they differ by design). "vs baseline" > 1 is faster than pretraining;
"/ pretrain" is the epoch time over the pretraining epoch's (the goal: <= 2).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def epoch_seconds(history: list[dict], epoch: int = 2) -> tuple[float, int]:
    """(seconds, steps) of the optimizer steps of `epoch` (1-based) from logging_steps=1 train lines."""
    lines = [m for m in history if epoch - 1 < m["epoch"] <= epoch]
    return sum(m["seconds_per_step"] for m in lines), len(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", help="zoo folder or Hub id (default: build a 20-model digits zoo in a temp folder)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hyperrep_hf.training import SaneTrainingArguments, train_sane
    from hyperrep_hf.training.finetune import SaneFinetuningArguments, finetune_sane

    tmp = tempfile.TemporaryDirectory()
    zoo = args.zoo
    if zoo is None:
        from hyperrep_hf.zoo import build_zoo

        zoo = str(Path(tmp.name) / "digits")
        build_zoo("digits-seed", zoo, num_models=20, epochs=4, progress=False)
    quiet = dict(progress=False, report_to=["none"], batch_size=args.batch_size, logging_steps=1)
    sane = str(Path(tmp.name) / "sane")
    pretrain = train_sane(SaneTrainingArguments(zoo=[zoo], output_dir=sane, preset=args.preset, epochs=2,
                                                eval_every=10**6, **quiet))
    t_base, steps_base = epoch_seconds(pretrain.train_history)
    variants = {"fine-tune: encoder + head, permutations (default)": {},
                "fine-tune: head only (freeze_encoder)": {"freeze_encoder": True},
                "fine-tune: encoder + head, no augmentation": {"permutation_augmentation": False}}
    table = [("pretraining epoch (baseline)", t_base, steps_base)]
    for i, (name, options) in enumerate(variants.items()):
        run = finetune_sane(SaneFinetuningArguments(checkpoint=sane, zoo=zoo, output_dir=str(Path(tmp.name) / f"ft{i}"),
                                                    properties=["test_acc", "epoch", "ggap"], epochs=2,
                                                    early_stopping_patience=0, **quiet, **options))
        table.append((name, *epoch_seconds(run.train_history)))
    print(f"SANE {args.preset}, batch {args.batch_size} models, zoo {zoo}, {torch.get_num_threads()} threads, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"{'variant':<52} {'s/epoch':>9} {'steps':>6} {'vs baseline':>12} {'/ pretrain':>11}")
    for name, t, steps in table:
        print(f"{name:<52} {t:>9.2f} {steps:>6} {t_base / t:>11.2f}x {t / t_base:>11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "preset": args.preset, "zoo": zoo, "batch_models": args.batch_size, "threads": torch.get_num_threads(),
            "goal": "fine-tuning epoch <= 2x pretraining epoch",
            "variants": [{"name": n, "seconds_per_epoch": t, "steps": s, "ratio_to_baseline": t_base / t,
                          "epoch_time_over_pretraining": t / t_base} for n, t, s in table]}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
