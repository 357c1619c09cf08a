"""`hyperrep probe fit|predict|eval`: linear probes of model properties on SANE, s(W) or W features."""

from __future__ import annotations

import argparse
import json

from ..modeling_sane import POOLINGS
from . import add_checkpoint_arguments, add_device_argument, open_pipeline, resolve_device

FEATURES = ("sane", "stats", "stats-gbt", "weights")  # downstream.probes.FEATURE_SETS, without importing it
FINETUNED = "sane-finetuned"  # downstream.evaluation.FINETUNED_FEATURES: a fine-tuned head (hyperrep finetune)
BLEND = "sane-finetuned+stats-gbt"  # downstream.blend.BLEND_FEATURES: that head and the s(W) trees blended


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="fit, apply and score linear probes of model properties",
        description="Linear probes (closed-form ridge, penalty chosen on validation; a linear classifier for "
        "categorical hyperparameters) on SANE embeddings, s(W) statistics or flat weights W, and "
        "gradient-boosted trees on s(W) (stats-gbt, hyperparameters chosen on validation). `fit` saves "
        "probes into the checkpoint folder (probes/<features>.json, trees as arrays, never pickle), where "
        "the weight-property-prediction pipeline finds them: the linear SANE probes of a checkpoint, or a "
        "fine-tuned head's blend with the trees (sane-finetuned+stats-gbt); `eval` fits stats-gbt in place.",
    )
    sub = p.add_subparsers(dest="probe_command", required=True, metavar="{fit,predict,eval}")

    fit = sub.add_parser("fit", help="fit probes on a zoo's train split (penalty chosen on validation) and save them")
    _common(fit)
    fit.add_argument("--pooling", choices=POOLINGS, default="mean",
                     help="SANE embedding pooling: mean (default, the published probe embedding), layer or full")
    fit.add_argument("--permutations", type=int, default=None,
                     help="average each SANE embedding over K function-preserving neuron permutations (default: "
                     "8 where the checkpoint stores the permutation spec and pooling is mean or "
                     "layer, else 0; fixed a priori, see CONTRIBUTING.md)")
    fit.add_argument("--epochs", nargs="+", type=int, default=None,
                     help="fit only on rows at these epochs, e.g. the final checkpoints (default: all)")
    fit.set_defaults(func=run_fit)

    pred = sub.add_parser("predict", help="predict properties of zoo rows or .safetensors models with saved probes")
    add_checkpoint_arguments(pred, "checkpoint folder or Hub repo id holding the probes")
    src = pred.add_mutually_exclusive_group(required=True)
    src.add_argument("--zoo", help="zoo folder or Hub dataset id")
    src.add_argument("--models", nargs="+", metavar="FILE", help=".safetensors state_dict files")
    pred.add_argument("--split", default="test", help="zoo split (default: test)")
    pred.add_argument("--properties", nargs="+", default=None, help="properties to predict (default: all fitted)")
    pred.add_argument("--out", default=None, help="write predictions as JSON here, a record per row: its model_id and "
                      "epoch (or the model file) and \"predicted\": {property: value} (default: print JSON lines)")
    pred.set_defaults(func=run_predict)

    ev = sub.add_parser("eval", help="score saved probes on a zoo split: R^2 / Kendall tau / accuracy table")
    _common(ev)
    ev.add_argument("--split", default="test", help="zoo split to score on (default: test)")
    ev.add_argument("--finetuned", default=None, metavar="CHECKPOINT",
                    help="the fine-tuned checkpoint (hyperrep finetune) scored as feature set sane-finetuned "
                    "(default: --checkpoint)")
    ev.add_argument("--epochs", nargs="+", type=int, default=None,
                    help="score only rows at these epochs (default: the epochs the probes were fitted on, else all)")
    ev.add_argument("--json", default=None, help="also write the table rows as JSON here")
    ev.add_argument("--bootstrap", type=int, default=0, metavar="B",
                    help="add 95%% intervals over B resamples of the split's models, and each feature set's paired "
                    "difference to stats where stats is scored too (default 0: none)")
    ev.set_defaults(func=run_eval)


def _common(p) -> None:
    p.add_argument("--checkpoint", required=True, help="SANE checkpoint folder; probes are saved in / read from it")
    p.add_argument("--zoo", required=True, help="zoo folder or Hub dataset id")
    p.add_argument("--features", nargs="+", choices=(*FEATURES, FINETUNED, BLEND), default=["sane"],
                   help="feature sets (default: sane); stats = s(W) with a linear probe, stats-gbt = s(W) with "
                   "gradient-boosted trees (eval fits them in place), weights = flat W, "
                   "sane-finetuned = the property head of a fine-tuned checkpoint (eval only: --finetuned), "
                   "sane-finetuned+stats-gbt = that head and stats-gbt blended, the head's weight chosen per "
                   "property on validation (fit: --checkpoint is the fine-tuned head; the pipeline then uses it)")
    p.add_argument("--properties", nargs="+", default=None,
                   help="zoo columns to probe (default: test_acc, epoch, ggap and the varied hyperparameters)")
    add_device_argument(p, "the SANE embeddings")


def _checkpoint_parts(args, features):
    if "sane" not in features:
        return None, None
    from ..downstream.generation import load_checkpoint

    return load_checkpoint(args.checkpoint, resolve_device(args.device))


def run_fit(args: argparse.Namespace) -> int:
    from ..downstream.evaluation import describe_left_out, fit_probes
    from ..zoo import load_zoo

    if FINETUNED in args.features:
        raise ValueError(f"{FINETUNED} scores a fine-tuned head, not a probe: train the head with `hyperrep finetune "
                         f"--checkpoint {args.checkpoint} --zoo {args.zoo} --output_dir OUT` and score it with `hyperrep "
                         f"probe eval --features {FINETUNED} --finetuned OUT` (or blend it with the s(W) trees: "
                         f"`hyperrep probe fit --checkpoint OUT --features {BLEND}`)")
    zoo = load_zoo(args.zoo)
    model, tokenizer = _checkpoint_parts(args, args.features)
    for features in args.features:
        if features == BLEND:  # the checkpoint is the fine-tuned head; the trees are fitted on its properties
            from ..cards import add_blend_results, zoo_card_name
            from ..downstream.evaluation import blended_head, finetuned_head

            head = finetuned_head(zoo, args.checkpoint, args.properties, args.epochs)
            trees = fit_probes(zoo, "stats-gbt", properties=head.properties, epochs=args.epochs)
            probes = blended_head(zoo, head, trees, args.epochs)
            path = probes.save(args.checkpoint)
            add_blend_results(args.checkpoint, probes, zoo_card_name(args.zoo))
        else:
            probes = fit_probes(zoo, features, args.checkpoint, model, tokenizer, args.properties, args.pooling,
                                progress=True, permutations=args.permutations, epochs=args.epochs)
            path = probes.save(args.checkpoint)
        scores = ", ".join(f"{n} {k} {v:.3f}" for n, p in probes.probes.items() for k, v in p.validation.items())
        print(f"{features}: validation {scores}; saved to {path}")
        for split, counts in probes.info.get("left_out", {}).items():
            if counts:
                print(f"{features}: {describe_left_out(counts, split)}")
    return 0


def run_predict(args: argparse.Namespace) -> int:

    from ..files import atomic_write_json

    pipe = open_pipeline("weight-property-prediction", args)
    if args.zoo:
        from ..zoo import load_zoo

        zoo = load_zoo(args.zoo)
        if args.split not in zoo.dataset:
            raise ValueError(f"the zoo has no split {args.split!r}; splits: {list(zoo.dataset)}")
        predictions = pipe(zoo.dataset[args.split], properties=args.properties)
        ids = zoo.metadata(args.split, ["model_id", "epoch"]).to_dict("records")
        # the row's own model_id and epoch beside the predictions (which may include a predicted "epoch")
        records = [{**i, "predicted": p} for i, p in zip(ids, predictions) if any(v is not None for v in p.values())]
        if len(records) < len(ids):
            print(f"left out {len(ids) - len(records)} of {len(ids)} rows of {args.split!r}: non-finite weights "
                  "(diverged checkpoints)")
    else:
        predictions = pipe(list(args.models), properties=args.properties)
        records = [{"model": m, "predicted": p} for m, p in zip(args.models, predictions)]
    if args.out:
        atomic_write_json(args.out, records)
        print(f"{len(records)} predictions written to {args.out}")
    else:
        for r in records:
            print(json.dumps(r))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..downstream.evaluation import fit_probes, format_table, score_split
    from ..downstream.probes import ProbeSet
    from ..files import atomic_write_json
    from ..zoo import load_zoo

    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0 (0: no intervals), got {args.bootstrap}")
    zoo = load_zoo(args.zoo)
    if args.split not in zoo.dataset:
        raise ValueError(f"the zoo has no split {args.split!r}; splits: {list(zoo.dataset)}")
    model, tokenizer = _checkpoint_parts(args, args.features)
    probe_sets = {features: ProbeSet.load(args.checkpoint, features) for features in args.features
                  if features not in ("stats-gbt", FINETUNED, BLEND)}
    epochs = args.epochs
    if epochs is None and probe_sets:
        fitted = {tuple(p.info["epochs"]) if p.info.get("epochs") else None for p in probe_sets.values()}
        epochs = list(fitted.pop()) if len(fitted) == 1 and None not in fitted else None
    if "stats-gbt" in args.features:
        properties = args.properties or (probe_sets["stats"].properties if "stats" in probe_sets else None)
        probe_sets["stats-gbt"] = fit_probes(zoo, "stats-gbt", properties=properties, epochs=epochs)
        print("stats-gbt: trees fitted on train, hyperparameters chosen on validation (not saved)")
    if FINETUNED in args.features or BLEND in args.features:
        from ..downstream.evaluation import blended_head, finetuned_head

        head = finetuned_head(zoo, args.finetuned or args.checkpoint, args.properties, epochs)
        probe_sets[FINETUNED] = head
        if BLEND in args.features:
            trees = probe_sets.get("stats-gbt") or fit_probes(zoo, "stats-gbt", properties=head.properties, epochs=epochs)
            probe_sets[BLEND] = blended_head(zoo, head, trees, epochs)
            weights = ", ".join(f"{n} {b.hyperparameters['head_weight']:g}" for n, b in probe_sets[BLEND].probes.items())
            print(f"{BLEND}: the head's weight per property, chosen on validation: {weights}")
    probe_sets = {f: probe_sets[f] for f in args.features}  # the table in the order asked for
    rows = score_split(zoo, probe_sets, args.split, model, tokenizer, args.properties, epochs, args.bootstrap)
    print(format_table(rows))
    if args.json:
        atomic_write_json(args.json, rows)
    return 0
