"""Fine-tuned SANE heads against the baselines on one zoo (issue 19): the README's tables.

    python scripts/study_finetune.py --zoo ZOO --checkpoint SANE --out OUT \
        [--properties test_acc epoch ggap] [--settings mean layer mean-stats mean-stats-mlp64]

Every setting is fine-tuned on the train split (`finetune_sane`, early stopping on the validation
loss); per property, the setting with the best validation score (R^2 or accuracy; `--choose joint`:
one setting for all, the lowest mean standardised validation loss) is the one scored on the test
split, beside SANE's linear probe, s(W), s(W)+GBT and the head blended with s(W)+GBT (the head's
weight chosen on validation; `probe_table`, paired intervals of the differences in R^2 or accuracy
and in Kendall's tau over 1,000 bootstrap resamples of the test models), then the issue's verdicts:
the head and the blend against each baseline, per property and metric, "ahead" (the interval of the
difference above 0), "behind" (below 0) or "level". A rerun resumes: finished settings are read
back, an interrupted one resumes from its last checkpoint. OUT/summary.json keeps everything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

SETTINGS = {
    "mean": {},
    "layer": {"pooling": "layer"},
    "mean-mlp64": {"head_hidden_dim": 64},
    "layer-mlp64": {"pooling": "layer", "head_hidden_dim": 64},
    "frozen-layer-mlp64": {"pooling": "layer", "head_hidden_dim": 64, "freeze_encoder": True},
    "mean-stats": {"statistics_features": True},
    "mean-stats-mlp64": {"statistics_features": True, "head_hidden_dim": 64},
    "layer-stats-mlp64": {"pooling": "layer", "statistics_features": True, "head_hidden_dim": 64},
}
COLUMNS = ["features", "property", "metric", "value", "kendall_tau", "validation", "ci", "vs_stats", "vs_stats_ci",
           "vs_stats-gbt", "vs_stats-gbt_ci", "vs_stats_tau", "vs_stats_tau_ci", "vs_stats-gbt_tau", "vs_stats-gbt_tau_ci"]


def verdict(interval) -> str:
    """"ahead", "behind" or "level": where the 95% interval [low, high] of a difference lies against 0."""
    low, high = interval
    return "ahead" if low > 0 else "behind" if high < 0 else "level"


def verdicts(rows: list[dict]) -> list[dict]:
    """The head's and the blend's verdicts against s(W) and s(W)+GBT, one row per (features, property):
    {"features", "property", "<metric> vs <baseline>", "tau vs <baseline>" (regressions)}."""
    out = []
    for r in rows:
        if r["features"] not in ("sane-finetuned", "sane-finetuned+stats-gbt"):
            continue
        row = {"features": r["features"], "property": r["property"]}
        for baseline in ("stats", "stats-gbt"):
            row[f"{r['metric']} vs {baseline}"] = verdict(r[f"vs_{baseline}_ci"])
            if f"vs_{baseline}_tau_ci" in r:
                row[f"tau vs {baseline}"] = verdict(r[f"vs_{baseline}_tau_ci"])
        out.append(row)
    return out


def validation_score(scores: dict) -> float:
    """A property's validation score in eval_results.json: R^2 (regression) or accuracy."""
    return scores["r2"] if "r2" in scores else scores["accuracy"]


def main(argv=None) -> int:
    from hyperrep_hf.downstream.evaluation import format_table, probe_table
    from hyperrep_hf.files import atomic_write_text
    from hyperrep_hf.training.finetune import SaneFinetuningArguments, finetune_sane
    from hyperrep_hf.zoo import load_zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--checkpoint", required=True, help="the pretrained SANE")
    parser.add_argument("--out", required=True)
    parser.add_argument("--properties", nargs="+", default=["test_acc", "epoch", "ggap"])
    parser.add_argument("--settings", nargs="+", default=["mean", "layer", "mean-stats", "mean-stats-mlp64"],
                        choices=list(SETTINGS))
    parser.add_argument("--choose", default="property", choices=["property", "joint"],
                        help="property: each property's head is the setting best on its validation score; "
                             "joint: one setting for all, the lowest validation loss")
    parser.add_argument("--epochs", type=int, default=30, help="at most this many epochs per setting")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {}
    for name in args.settings:
        folder, start = out / name, time.time()
        if not (folder / "training_complete.json").is_file():
            resume = "last" if any((folder / "checkpoints").glob("step-*")) else None
            finetune_sane(SaneFinetuningArguments(
                checkpoint=args.checkpoint, zoo=args.zoo, output_dir=str(folder), properties=args.properties,
                epochs=args.epochs, progress=False, report_to=["tensorboard"], overwrite_output_dir=resume is None,
                resume=resume, **SETTINGS[name]))
        results = json.loads((folder / "eval_results.json").read_text())
        settings[name] = {"validation_loss": results["validation"]["loss"], "best_epoch": results["best_epoch"],
                          "epochs_run": results["epochs_run"], "seconds": round(time.time() - start, 1),
                          "validation": {p: results["validation"][p] for p in args.properties}}
        print(name, json.dumps(settings[name]), flush=True)
    if args.choose == "joint":
        chosen = {p: min(settings, key=lambda n: settings[n]["validation_loss"]) for p in args.properties}
    else:
        chosen = {p: max(settings, key=lambda n: validation_score(settings[n]["validation"][p])) for p in args.properties}
    print("chosen on validation:", json.dumps(chosen), flush=True)
    rows = []
    for name in dict.fromkeys(chosen.values()):  # one table per chosen head, over the properties it won
        rows += probe_table(load_zoo(args.zoo), checkpoint=args.checkpoint, finetuned=str(out / name),
                            feature_sets=["sane-finetuned", "sane", "stats", "stats-gbt", "sane-finetuned+stats-gbt"],
                            properties=[p for p in args.properties if chosen[p] == name], bootstrap=1000)
    command = " ".join(["python scripts/study_finetune.py", *(sys.argv[1:] if argv is None else argv)])
    summary = {"command": command, "settings": settings, "chosen": chosen, "table": rows, "verdicts": verdicts(rows)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    print(format_table(rows, COLUMNS))
    print(format_table(summary["verdicts"], ["features", "property", *sorted({c for v in summary["verdicts"] for c in v} - {"features", "property"})]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
