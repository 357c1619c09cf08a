"""Result tables: probes of SANE vs s(W) vs W on one split, and sampled vs from-scratch vs zoo models.

    from hyperrep_hf.downstream.evaluation import probe_table, generation_table, format_table
    rows = probe_table(zoo, checkpoint="checkpoints/sane")          # list of dicts
    print(format_table(rows))                                        # markdown
    rows = generation_table("checkpoints/sane", zoo, methods=("kde30", "sub"), epochs=(0, 1, 5))

Every probe is fitted on the zoo's train split, its penalty (trees: hyperparameters) chosen on
validation, scored on test.
SANE features are permutation-averaged embeddings (downstream.embedding) over PROBE_PERMUTATIONS
permutations by default, where the checkpoint knows the architecture's permutation spec.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..zoo.architectures import build_model, init_weights
from .blend import BLEND_FEATURES, BlendedProbeSet
from .embedding import embed_flat
from .generation import ModelGenerator, find_layout, load_checkpoint
from .head import FINETUNED_FEATURES, FinetunedHead
from .probes import FEATURE_SETS, ProbeSet, missing_targets, property_score
from .scores import bootstrap_means, model_bootstrap, num_nonfinite, percentile_interval
from .trees import GBT_FEATURES, TreeProbeSet

DEFAULT_PROPERTIES = ("test_acc", "epoch", "ggap")
CATEGORICAL_HYPERPARAMETERS = ("activation", "init", "optimizer")
NUMERIC_HYPERPARAMETERS = ("lr", "weight_decay", "dropout")
# Permutations a probe's SANE embedding is averaged over by default, fixed a priori (no test or
# validation figure chose it): a zoo stores each model in the arbitrary neuron order its training
# happened to give, and every order computes the same function, so the part of an embedding that
# depends on the order is noise to any property. Averaging over K random function-preserving
# permutations is a Monte-Carlo estimate of the order-free embedding whose noise variance falls as
# 1/K; K = 8 brings its std to about a third at 8x the cost of one embedding pass, a compute
# budget. `permutations=` sets another K.
PROBE_PERMUTATIONS = 8
# Pooling of a probe's SANE embedding, fixed a priori: "mean" over tokens is the published model
# embedding for probing (METHOD.md §2); "layer" and "full" are there for studies, set explicitly.
PROBE_POOLING = "mean"
def finetuned_head(zoo, checkpoint, properties: Sequence[str] | None = None, epochs: Sequence[int] | None = None,
                   progress: bool = False) -> FinetunedHead:
    """The fine-tuned head of `checkpoint` ready for a probe table: its validation scores on the zoo
    (rows at `epochs`) are filled in; `properties` (None: all the head predicts) must be the head's."""
    head = FinetunedHead.load(checkpoint)
    if properties is not None:
        head.predict(torch.zeros(0, sum(head.model.output_sizes)), properties)  # names the ones it lacks
        head.probes = {n: head.probes[n] for n in properties}
    rows, _ = usable_rows(zoo, "validation", epochs)
    x = zoo_features(zoo, "validation", FINETUNED_FEATURES, head.model, head.tokenizer, rows=rows, progress=progress)
    finite = torch.isfinite(x).all(1).numpy()
    targets = zoo_targets(zoo, "validation", head.properties, rows[finite])
    predicted = head.predict(x[torch.as_tensor(finite)])
    for name, probe in head.probes.items():
        score = property_score(probe.kind, targets[name], predicted[name], kendall=False)
        probe.validation = {k: v for k, v in score.items()}
    return head


def blended_head(zoo, head: FinetunedHead, trees: TreeProbeSet, epochs: Sequence[int] | None = None,
                 progress: bool = False) -> BlendedProbeSet:
    """The fine-tuned `head` and the s(W) `trees` blended ("sane-finetuned+stats-gbt", downstream.blend),
    each property's head weight chosen on the zoo's validation rows at `epochs`."""
    rows, _ = usable_rows(zoo, "validation", epochs)
    x = zoo_features(zoo, "validation", BLEND_FEATURES, head.model, head.tokenizer, rows=rows, progress=progress)
    finite = torch.isfinite(x).all(1)
    targets = zoo_targets(zoo, "validation", head.properties, rows[finite.numpy()])
    return BlendedProbeSet.fit(head, trees, x[finite], targets)


# ------------------------------------------------------------------------------------ features
def zoo_properties(zoo, properties: Sequence[str] | None = None, epochs: Sequence[int] | None = None) -> list[str]:
    """The properties to probe: the given ones (checked against the zoo's columns), or test accuracy,
    epoch, generalisation gap and every hyperparameter the zoo varies (activation, lr, ...). With a
    single epoch in `epochs` the default leaves out "epoch" (constant there)."""
    columns = set(zoo.column_names("train"))
    if properties is None:
        varied = [v for v in zoo.info.get("varied", []) if v in CATEGORICAL_HYPERPARAMETERS + NUMERIC_HYPERPARAMETERS]
        properties = [p for p in DEFAULT_PROPERTIES if p in columns] + varied
        if epochs is not None and len(set(epochs)) == 1:
            properties = [p for p in properties if p != "epoch"]
    missing = [p for p in properties if p not in columns or p == "weights"]
    if missing:
        raise ValueError(f"the zoo has no column(s) {missing} to probe; columns: {sorted(columns - {'weights'})}")
    return list(properties)


def usable_rows(zoo, split: str, epochs: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """The rows of a zoo split that probes, tables and embeddings use, and the count of those left out.

    Returns (rows [n] int64 indices into the split, left_out {reason: count}). A row is used when it
    is at one of `epochs` (None: every epoch) and all its weights are finite; a diverged checkpoint
    with NaN / inf weights is left out of every feature set, counted as "non-finite weights".
    Rows at other epochs are filtered, not counted.
    """
    if split not in zoo.splits:
        raise ValueError(f"the zoo has no split {split!r}; splits: {zoo.splits}")
    keep = np.ones(zoo.num_rows(split), dtype=bool)
    if epochs is not None:
        chosen = sorted({int(e) for e in epochs})
        at = zoo.metadata(split, ["epoch"])["epoch"].to_numpy()
        keep = np.isin(at, chosen)
        if not keep.any():
            raise ValueError(f"split {split!r} has no rows at epochs {chosen}; its epochs: {sorted(set(at.tolist()))}")
    finite = _finite_rows(zoo.rows(split)).numpy()
    if not (keep & finite).any():
        raise ValueError(f"every row of split {split!r}{'' if epochs is None else f' at epochs {chosen}'} has non-finite "
                         "weights (diverged checkpoints): nothing to probe or embed; pick other epochs or another split")
    left_out = {"non-finite weights": int((keep & ~finite).sum())}
    return np.flatnonzero(keep & finite), {k: n for k, n in left_out.items() if n}


def _chunks(weights, max_bytes: int = 64 << 20):
    """Rows [M, P] (a tensor or a lazy ZooRows) in order, about max_bytes (one row at least) at a time."""
    step = max(1, max_bytes // (4 * max(1, weights.shape[1])))
    for start in range(0, len(weights), step):
        yield weights[start:start + step]


def _finite_rows(weights) -> torch.Tensor:
    """bool [M]: the rows whose weights are all finite, read a chunk at a time."""
    parts = [torch.isfinite(chunk).all(1) for chunk in _chunks(weights)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def _pick(weights, index):
    """Rows by indices or a boolean mask: a ZooRows view (nothing read) or a tensor's rows."""
    index = np.asarray(index)
    return weights[torch.as_tensor(index)] if torch.is_tensor(weights) else weights.select(index)


def zoo_targets(zoo, split: str, properties: Sequence[str], rows=None) -> dict[str, list]:
    """{property: one value per row of `split`} from the zoo's metadata columns; `rows` (indices, e.g.
    from `usable_rows`) picks rows, default all."""
    meta = zoo.metadata(split, list(properties))
    if rows is not None:
        meta = meta.iloc[np.asarray(rows, dtype=np.int64)]
    return {p: meta[p].tolist() for p in properties}


def probe_permutations(tokenizer, zoo, permutations: int | None, pooling: str = "mean") -> int:
    """The number of permutations SANE probe features average over: `permutations`, or when None
    PROBE_PERMUTATIONS if the checkpoint stores the zoo architecture's permutation spec and the
    pooling is "mean" or "layer", else 0."""
    if permutations is not None:
        return permutations
    has_spec = tokenizer.layouts[find_layout(tokenizer, zoo.layout)].permutation is not None
    return PROBE_PERMUTATIONS if has_spec and pooling != "full" else 0


def zoo_features(zoo, split: str, features: str, model=None, tokenizer=None, pooling: str = "mean",
                 batch_size: int = 64, progress: bool = False, permutations: int = 0, rows=None) -> torch.Tensor:
    """One feature vector per row of a zoo split: "sane" (embeddings; needs model and tokenizer;
    averaged over `permutations` neuron permutations), "stats" or "stats-gbt" (s(W) statistics) or
    "weights" (the flat weights W). `rows` (indices) picks rows, default all; pass `usable_rows(zoo, split)[0]` to
    leave out diverged checkpoints (it also counts them). Returns [rows, d]; a row with non-finite
    weights gets non-finite features (NaN SANE embeddings: it is not embedded). Rows are read from
    the zoo a slice at a time (`zoo.rows`): statistics and embeddings need memory for a slice,
    not the split (only "weights" returns the split's weights whole)."""
    if features not in (*FEATURE_SETS, FINETUNED_FEATURES, BLEND_FEATURES):
        raise ValueError(f"unknown feature set {features!r}; choose one of "
                         f"{[*FEATURE_SETS, FINETUNED_FEATURES, BLEND_FEATURES]}")
    if features == BLEND_FEATURES:  # model: the SaneForPropertyPrediction; the head's outputs, then s(W)
        return torch.cat([zoo_features(zoo, split, f, model, tokenizer, batch_size=batch_size, progress=progress,
                                       rows=rows) for f in (FINETUNED_FEATURES, "stats")], dim=1)
    weights = zoo.rows(split)
    if rows is not None:
        weights = _pick(weights, np.asarray(rows, dtype=np.int64))
    if features == "weights":
        return weights[:].float()
    if features in ("stats", GBT_FEATURES):
        from ..weightspace.statistics import weight_statistics

        parts = [weight_statistics(chunk, zoo.layout)[0] for chunk in _chunks(weights)]
        return torch.cat(parts) if parts else weight_statistics(weights[:], zoo.layout)[0]
    if model is None or tokenizer is None:
        raise ValueError("SANE features need the checkpoint: pass model and tokenizer (or checkpoint=FOLDER)")
    layout_id = find_layout(tokenizer, zoo.layout)
    finite = _finite_rows(weights)
    if features == FINETUNED_FEATURES:  # model: the SaneForPropertyPrediction; features: its outputs
        embeddings = FinetunedHead(model, tokenizer).outputs(_pick(weights, finite.numpy()), layout_id, batch_size, progress)
    else:
        embeddings = embed_flat(model, tokenizer, _pick(weights, finite.numpy()), pooling, layout_id, batch_size,
                                progress=progress, permutations=permutations)
    if bool(finite.all()):
        return embeddings
    out = embeddings.new_full((len(weights), *embeddings.shape[1:]), float("nan"))
    out[finite] = embeddings
    return out


def describe_left_out(left_out: dict[str, int], split: str) -> str:
    """{reason or property: count} -> "left out of SPLIT: 1 row with non-finite weights, 2 rows
    without test_acc" ("" when nothing was left out)."""
    parts = []
    for reason, n in left_out.items():
        rows = f"{n} row{'s' if n != 1 else ''}"
        parts.append(f"{rows} with {reason}" if reason.startswith("non-finite") else f"{rows} without {reason}")
    return f"left out of {split}: " + ", ".join(parts) if parts else ""


def _leave_out_non_finite(x: dict[str, torch.Tensor], rows: np.ndarray, left_out: dict[str, int]):
    """Rows whose features are non-finite in any feature set (finite but huge weights can overflow
    s(W)), left out of all of them so every feature set is scored on the same rows."""
    finite = np.logical_and.reduce([torch.isfinite(v).all(1).numpy() for v in x.values()])
    if finite.all():
        return x, rows, left_out
    left_out = {**left_out, "non-finite features": int((~finite).sum())}
    keep = torch.as_tensor(finite)
    return {k: v[keep] for k, v in x.items()}, rows[finite], left_out


def fit_probes(zoo, features: str = "sane", checkpoint=None, model=None, tokenizer=None,
               properties: Sequence[str] | None = None, pooling: str = PROBE_POOLING, progress: bool = False,
               permutations: int | None = None, epochs: Sequence[int] | None = None,
               seed: int = 0) -> ProbeSet | TreeProbeSet:
    """Fit a ProbeSet of one feature set on the zoo's train split (penalties chosen on validation);
    for "stats-gbt" a TreeProbeSet (gradient-boosted trees on s(W), hyperparameters chosen on
    validation, seeded by `seed`; `save` keeps its trees as arrays).
    SANE features average over `permutations` (None: see `probe_permutations`); the number is
    saved with the probes, and the property-prediction pipeline embeds the same way.

    Only rows at `epochs` (None: all) are used; rows with non-finite weights or features are left
    out, rows without a target left out of that property's probe: `info["left_out"]` counts both
    per split ({"train": {"non-finite weights": 1, "test_acc": 2}, ...}), `info["epochs"]` keeps `epochs`.
    """
    if features == "sane" and (model is None or tokenizer is None):
        if checkpoint is None:
            raise ValueError("SANE probes need a checkpoint: pass checkpoint=FOLDER (or model and tokenizer)")
        model, tokenizer = load_checkpoint(checkpoint)
    properties = zoo_properties(zoo, properties, epochs)
    permutations = probe_permutations(tokenizer, zoo, permutations, pooling) if features == "sane" else 0
    x, targets, left_out = {}, {}, {}
    for s in ("train", "validation"):
        rows, left_out[s] = usable_rows(zoo, s, epochs)
        features_s = {features: zoo_features(zoo, s, features, model, tokenizer, pooling, progress=progress,
                                             permutations=permutations, rows=rows)}
        features_s, rows, left_out[s] = _leave_out_non_finite(features_s, rows, left_out[s])
        x[s], targets[s] = features_s[features], zoo_targets(zoo, s, properties, rows)
    info = {"pooling": pooling if features == "sane" else None, "permutations": permutations,
            "zoo": str(getattr(zoo, "path", "")), "checkpoint": None if checkpoint is None else str(checkpoint),
            "epochs": None if epochs is None else sorted({int(e) for e in epochs}), "left_out": left_out}
    if features == GBT_FEATURES:
        return TreeProbeSet.fit(features, x["train"], targets["train"], x["validation"], targets["validation"], info=info,
                                seed=seed)
    return ProbeSet.fit(features, x["train"], targets["train"], x["validation"], targets["validation"], info=info)


def probe_table(zoo, checkpoint=None, feature_sets: Sequence[str] = FEATURE_SETS, properties: Sequence[str] | None = None,
                pooling: str = PROBE_POOLING, split: str = "test", progress: bool = False,
                permutations: int | None = None, bootstrap: int = 0, seed: int = 0,
                epochs: Sequence[int] | None = None, finetuned=None) -> list[dict]:
    """Fit probes on train (penalty, or the trees' hyperparameters, chosen on validation) for each
    feature set, score them on `split`. Feature sets: "sane", "stats" (linear s(W)), "stats-gbt"
    (gradient-boosted trees on s(W), the baseline of Unterthiner et al. 2020; seeded by `seed`),
    "weights", "sane-finetuned": the property head of the fine-tuned checkpoint `finetuned`
    (`hyperrep finetune`; default `checkpoint` when it has a head), scored on its own properties, and
    "sane-finetuned+stats-gbt": that head and the s(W) trees blended (downstream.blend).

    Rows: {"features", "property", "metric" ("r2" or "accuracy"), "value", "kendall_tau", "penalty",
    "validation", "num_rows", "left_out"} (+ "hyperparameters" for trees). "sane" needs `checkpoint`
    (it is skipped when None, so the baselines alone work). `epochs` fits and scores only rows at those epochs (e.g. the final
    checkpoints, NFN's test set). Rows with non-finite weights are left out of every score, rows
    without a target out of that property's; "left_out" counts the split's rows a score leaves out.
    With `bootstrap=B` > 0 every row also gets "ci", the 95% interval of its value over B resamples of
    the split's models (`add_bootstrap_intervals`) and "nonfinite" (resamples without a finite
    value, not in "ci"), and rows of the other feature sets the paired difference to each s(W)
    baseline scored: "vs_stats", "vs_stats_ci", "vs_stats_nonfinite" (and "vs_stats-gbt", ...), and for
    regressions the same in Kendall's tau: "kendall_tau_ci", "vs_stats_tau", "vs_stats_tau_ci", ....
    """
    model = tokenizer = None
    asked = properties
    properties = zoo_properties(zoo, properties, epochs)
    probe_sets, head = {}, None
    for features in feature_sets:
        if features in (FINETUNED_FEATURES, BLEND_FEATURES):
            if (finetuned or checkpoint) is None:
                continue
            head = head or finetuned_head(zoo, finetuned or checkpoint, asked, epochs, progress)
            if features == FINETUNED_FEATURES:
                probe_sets[features] = head
            else:
                trees = probe_sets.get(GBT_FEATURES) or fit_probes(zoo, GBT_FEATURES, properties=head.properties,
                                                                   epochs=epochs, seed=seed)
                probe_sets[features] = blended_head(zoo, head, trees, epochs, progress)
            continue
        if features == "sane":
            if checkpoint is None:
                continue
            model, tokenizer = load_checkpoint(checkpoint)
        probe_sets[features] = fit_probes(zoo, features, checkpoint, model, tokenizer, properties, pooling, progress,
                                          permutations, epochs, seed)
    return score_split(zoo, probe_sets, split, model, tokenizer, properties, epochs, bootstrap, seed, progress)


def score_split(zoo, probe_sets: dict[str, ProbeSet], split: str = "test", model=None, tokenizer=None,
                properties: Sequence[str] | None = None, epochs: Sequence[int] | None = None, bootstrap: int = 0,
                seed: int = 0, progress: bool = False) -> list[dict]:
    """Probe-table rows of fitted probe sets ({features: ProbeSet}; SANE ones need model and tokenizer)
    scored on the rows of `split` at `epochs` (None: all), every feature set on the same rows.
    Properties: the given ones, else each probe set's own. Rows with non-finite weights (or
    features) are left out and counted in each row's "left_out"; `bootstrap` as in `probe_table`."""
    rows, left_out = usable_rows(zoo, split, epochs)
    x = {}
    for f, p in probe_sets.items():
        same = "stats" if f == GBT_FEATURES and "stats" in x else None  # the same s(W) features: compute them once
        own = (p.model, p.tokenizer) if f in (FINETUNED_FEATURES, BLEND_FEATURES) else (model, tokenizer)
        x[f] = x[same] if same else zoo_features(zoo, split, f, *own, p.info.get("pooling") or "mean",
                                                 progress=progress, permutations=p.info.get("permutations", 0), rows=rows)
    x, rows, left_out = _leave_out_non_finite(x, rows, left_out)
    names = {f: list(properties) if properties is not None and f not in (FINETUNED_FEATURES, BLEND_FEATURES)
             else p.properties
             for f, p in probe_sets.items()}
    targets = zoo_targets(zoo, split, list(dict.fromkeys(n for ns in names.values() for n in ns)), rows)
    table, predictions = [], {}
    for features, probes in probe_sets.items():
        table += score_probes(probes, x[features], targets, names[features], predictions, sum(left_out.values()))
    if bootstrap:
        groups = zoo.metadata(split, ["model_id"])["model_id"].to_numpy()[rows]
        # paired differences to each s(W) baseline scored here (the same resamples: "ci" is the same)
        for baseline in [b for b in ("stats", GBT_FEATURES) if b in probe_sets] or ["stats"]:
            add_bootstrap_intervals(table, predictions, targets, groups, bootstrap, seed, baseline)
    return table


def score_probes(probes: ProbeSet | TreeProbeSet, x: torch.Tensor, targets: dict, properties: Sequence[str],
                 predictions: dict | None = None, left_out: int = 0) -> list[dict]:
    """Probe-table rows of one probe set on features x [rows, d]: {"features", "property", "metric",
    "value", "kendall_tau", "penalty", "validation", "num_rows", "left_out"} per property. "num_rows"
    counts the rows scored (a missing target leaves its row out), "left_out" the rows left out: those
    without a target plus `left_out` (rows dropped before x, e.g. with non-finite weights). The
    predictions are also stored in `predictions[(features, property)]` when given (for
    `add_bootstrap_intervals`)."""
    predicted = probes.predict(x, properties)
    rows = []
    for name in properties:
        probe = probes.probes[name]
        score = property_score(probe.kind, targets[name], predicted[name])
        missing = int(missing_targets(targets[name]).sum())
        metric = "accuracy" if probe.kind == "classification" else "r2"
        if predictions is not None:
            predictions[probes.features, name] = predicted[name]
        rows.append({
            "features": probes.features, "property": name, "metric": metric, "value": score[metric],
            "kendall_tau": score.get("kendall_tau"), "penalty": probe.penalty,
            "validation": next(iter(probe.validation.values())),
            "num_rows": len(x) - missing, "left_out": int(left_out) + missing,
        })
        if getattr(probe, "hyperparameters", None) is not None:  # trees: what validation chose
            rows[-1]["hyperparameters"] = dict(probe.hyperparameters)
    return rows


def add_bootstrap_intervals(rows: list[dict], predictions: dict, targets: dict, groups, resamples: int = 1000,
                            seed: int = 0, baseline: str = "stats", level: float = 0.95) -> list[dict]:
    """Add model-level bootstrap intervals to probe-table rows (in place; returns them).

    predictions: {(features, property): one prediction per row}; targets: {property: values};
    groups: the rows' model ids (a model's checkpoints are resampled together). Every row gets
    "ci" = [low, high], the central `level` interval of its value over `resamples` resamples of
    the models, and "nonfinite", how many resamples gave no finite value (e.g. R^2 of resampled
    targets that are all equal) and so are not in "ci"; a row of another feature set than
    `baseline` also gets "vs_<baseline>" (its value minus the baseline's), "vs_<baseline>_ci", the
    interval of that difference on the same resamples (paired: it is narrower than the two "ci"
    suggest, and excludes 0 where the difference holds beyond the choice of test models) and
    "vs_<baseline>_nonfinite". Regression rows get the same for Kendall's tau on the same
    resamples: "kendall_tau_ci", "vs_<baseline>_tau" and "vs_<baseline>_tau_ci".
    """
    draws = model_bootstrap(groups, resamples, seed)
    cache = {}

    def resampled(features: str, name: str, metric: str) -> dict[str, np.ndarray]:
        """{score: its value on each resample}: the row's metric, and Kendall's tau for a regression."""
        if (features, name) not in cache:
            kind = "classification" if metric == "accuracy" else "regression"
            y, p = np.asarray(targets[name]), np.asarray(predictions[features, name])
            scores = [property_score(kind, y[d], p[d], kendall=kind == "regression") for d in draws]
            cache[features, name] = {k: np.array([s[k] for s in scores]) for k in scores[0]}
        return cache[features, name]

    def difference(own: np.ndarray, other: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # -inf - -inf: a resample neither could score, counted
            return own - other

    values = {(r["features"], r["property"]): r for r in rows}
    for row in rows:
        own = resampled(row["features"], row["property"], row["metric"])
        row["ci"], row["nonfinite"] = percentile_interval(own[row["metric"]], level), num_nonfinite(own[row["metric"]])
        if "kendall_tau" in own:
            row["kendall_tau_ci"] = percentile_interval(own["kendall_tau"], level)
        if row["features"] == baseline or (baseline, row["property"]) not in predictions:
            continue
        base = resampled(baseline, row["property"], row["metric"])
        gap = difference(own[row["metric"]], base[row["metric"]])
        row[f"vs_{baseline}"] = row["value"] - values[baseline, row["property"]]["value"]
        row[f"vs_{baseline}_ci"], row[f"vs_{baseline}_nonfinite"] = percentile_interval(gap, level), num_nonfinite(gap)
        if "kendall_tau" in own:
            tau = values[baseline, row["property"]].get("kendall_tau")
            row[f"vs_{baseline}_tau"] = row["kendall_tau"] - tau if row.get("kendall_tau") is not None and tau is not None else None
            row[f"vs_{baseline}_tau_ci"] = percentile_interval(difference(own["kendall_tau"], base["kendall_tau"]), level)
    return rows


# ----------------------------------------------------------------------------------- generation
def _zoo_hyperparameter(zoo, name: str, default):
    values = zoo.config.get("hyperparameters", {}).get(name)
    return values[0] if values else default


def finetune_accuracy(models: Sequence[nn.Module], task, epochs: Sequence[int] = (0, 1, 5), seed: int = 0,
                      **finetune_options) -> dict[int, torch.Tensor]:
    """Test accuracy [M] of each model after fine-tuning for each number of `epochs` on `task`
    (0 = as given). The models are copied, not changed. finetune_options: lr, optimizer,
    weight_decay, batch_size (zoo.population.finetune)."""
    from ..zoo.population import evaluate_accuracy, finetune

    epochs = sorted({int(e) for e in epochs})
    if not epochs or epochs[0] < 0:
        raise ValueError(f"epochs must be non-negative integers, got {epochs}")
    copies = [copy.deepcopy(m) for m in models]
    if epochs[-1] == 0:
        return {0: evaluate_accuracy(copies, task, "test").cpu()}
    history = finetune(copies, task, epochs[-1], seed=seed, **finetune_options)
    return {e: history["test_acc"][e].cpu() for e in epochs}


def _final_rows(meta) -> np.ndarray:
    """bool [rows] of a split's metadata: at its last epoch and not diverged."""
    keep = (meta["epoch"] == meta["epoch"].max()).to_numpy().copy()
    if "diverged" in meta.columns:
        keep &= ~meta["diverged"].fillna(False).astype(bool).to_numpy()
    return keep


def zoo_recipe(zoo) -> dict:
    """How the zoo's best model was made: {"init", "optimizer", "lr", "architecture_kwargs"} of the
    train row with the highest val_acc at the last epoch (not diverged), the model sampling anchors
    are built like (`prepare_sampling`). A hyperparameter the zoo has no column for (or no best row)
    takes its config's first value, else the default (init "default", optimizer "adam", lr 1e-3).
    In a seed zoo this is the zoo's one recipe; in a hyperparameter zoo it keeps the from-scratch
    baseline off settings that train to chance (mnist-hyp's first init is U(0, 1))."""
    from ..zoo.architectures import architecture_kwargs_for_row

    row = None
    if "train" in zoo.splits and zoo.num_rows("train"):
        meta = zoo.metadata("train")
        keep = _final_rows(meta)
        scores = meta["val_acc"].to_numpy(dtype=np.float64) if "val_acc" in meta.columns else np.full(len(meta), np.nan)
        keep &= np.isfinite(scores)
        if keep.any():
            row = meta.iloc[int(np.flatnonzero(keep)[np.argmax(scores[keep])])].to_dict()
    recipe = {name: row[name] if row is not None and row.get(name) is not None else _zoo_hyperparameter(zoo, name, default)
              for name, default in (("init", "default"), ("optimizer", "adam"), ("lr", 1e-3))}
    recipe["lr"] = float(recipe["lr"])
    recipe["architecture_kwargs"] = architecture_kwargs_for_row(zoo.architecture, zoo.architecture_kwargs, row)
    return recipe


def scratch_models(zoo, num_models: int, seed: int = 0) -> list[nn.Module]:
    """Fresh models of the zoo's architecture, built and initialised as its best model (`zoo_recipe`)."""
    recipe = zoo_recipe(zoo)
    out = []
    for i in range(num_models):
        g = torch.Generator().manual_seed(seed + i)
        torch.manual_seed(seed + i)  # layers without an explicit init use the global generator
        model = build_model(zoo.architecture, **recipe["architecture_kwargs"])
        out.append(init_weights(model, recipe["init"], generator=g))
    return out


def zoo_models(zoo, num_models: int, split: str = "test") -> list[nn.Module]:
    """The zoo's own models of `split` at its last epoch (not diverged), the first `num_models`."""
    meta = zoo.metadata(split)
    rows = np.flatnonzero(_final_rows(meta))
    weights = zoo.weights(split)
    # a row, not a bare vector: each model is rebuilt with its own activation / dropout
    return [zoo.build_model({**meta.iloc[int(r)].to_dict(), "weights": weights[int(r)]}) for r in rows[:num_models]]


def _summary(source: str, task_name: str, accs: dict[int, torch.Tensor]) -> list[dict]:
    rows = []
    for epoch, acc in accs.items():
        acc = acc.double()
        rows.append({"source": source, "task": task_name, "epoch": epoch, "mean_acc": float(acc.mean()),
                     "std_acc": float(acc.std()) if len(acc) > 1 else 0.0, "num_models": len(acc)})
    return rows


def generation_table(checkpoint, zoo, methods: Sequence[str] = ("kde30",), num_samples: int = 5,
                     epochs: Sequence[int] = (0, 1, 5), task=None, num_scratch: int | None = None,
                     num_zoo: int | None = None, seed: int = 0, generator: ModelGenerator | None = None,
                     samples: dict[str, Sequence[nn.Module]] | None = None, bootstrap: int = 0,
                     baseline: str = "kde30", baseline_epoch: int | None = None, **finetune_options) -> list[dict]:
    """Accuracy of sampled models vs the same architecture from scratch vs the zoo's own models,
    after fine-tuning for each of `epochs` on `task` (default: the zoo's task; another task name or
    TaskData measures transfer, e.g. a digits zoo prompting a Fashion-MNIST task).

    Rows: {"source" (a method, "scratch" or "zoo"), "task", "epoch", "mean_acc", "std_acc",
    "num_models"}. Fine-tuning uses the optimizer and learning rate of the zoo's best model
    (`zoo_recipe`) unless given; scratch models are built and initialised as that model.
    `samples` ({label: models}) adds models sampled beforehand (e.g. by the pipeline).
    `bootstrap=B` > 0 adds the 95% intervals of `finetuned_group_rows` ("ci", and "vs_<baseline>",
    "vs_<baseline>_ci" against the `baseline` group, e.g. "vs_kde30"; with `baseline_epoch` against
    that group after so many epochs, e.g. baseline="scratch", baseline_epoch=5).
    """
    from ..zoo.tasks import TaskData, load_task

    task = task or zoo.task
    task = task if isinstance(task, TaskData) else load_task(task)
    expected = (tuple(zoo.info.get("input_shape") or task.input_shape), zoo.info.get("num_classes") or task.num_classes)
    if (task.input_shape, task.num_classes) != expected:
        raise ValueError(
            f"task {task.name!r} has inputs {list(task.input_shape)} and {task.num_classes} classes, but the zoo's "
            f"models take {list(expected[0])} and predict {expected[1]}; transfer to a task of the same input shape "
            "and number of classes"
        )
    recipe = zoo_recipe(zoo)
    finetune_options.setdefault("optimizer", recipe["optimizer"])
    finetune_options.setdefault("lr", recipe["lr"])
    if generator is None and methods:
        from .generation import SamplingAnchors

        model, tokenizer = load_checkpoint(checkpoint)
        generator = ModelGenerator(model, tokenizer, SamplingAnchors.load(checkpoint), task)
    groups = {label: list(models) for label, models in (samples or {}).items()}
    for method in methods:
        # BatchNorm conditioning and SUB scoring use the evaluation task, as a user would.
        generator.task = task
        groups[method] = [s["model"] for s in generator.generate(num_samples, method, seed)]
    groups["scratch"] = scratch_models(zoo, num_scratch or num_samples, seed)
    own = zoo_models(zoo, num_zoo or num_samples)
    if own:
        groups["zoo"] = own
    return finetuned_group_rows(groups, task, epochs, seed, bootstrap=bootstrap, baseline=baseline,
                                baseline_epoch=baseline_epoch, **finetune_options)


def finetuned_group_rows(groups: Mapping[str, Sequence], task, epochs, seed: int, bootstrap: int = 0,
                         baseline: str | None = None, baseline_epoch: int | None = None,
                         **finetune_options) -> list[dict]:
    """Fine-tune every group of models {label: [nn.Module]} on `task` and summarise each group's
    accuracy at `epochs` (the rows of a generation / transfer table). One population for all groups:
    same-architecture models fine-tune together in one stacked pass.

    `bootstrap=B` > 0: every row also gets "ci", the 95% interval of its mean accuracy over B
    resamples of its group's models, and rows of the other groups, when `baseline` is one of them,
    "vs_<baseline>" (mean accuracy minus the baseline's at the same epoch) and "vs_<baseline>_ci", the
    interval of that difference with both groups resampled independently (the models of two groups
    are not paired): an interval that includes 0 says the two are level on these models.
    `baseline_epoch=E` compares every row with the baseline after E epochs instead ("vs_<baseline>_at_E",
    "vs_<baseline>_at_E_ci"): the transfer relation "sampled after one epoch beats scratch after five"
    is the row at epoch 1 with baseline "scratch" and baseline_epoch 5."""
    if baseline_epoch is not None and int(baseline_epoch) not in {int(e) for e in epochs}:
        raise ValueError(f"baseline_epoch {baseline_epoch} is not one of the epochs {sorted(epochs)}; add it to epochs")
    everything = [m for models in groups.values() for m in models]
    accs = finetune_accuracy(everything, task, epochs, seed, **finetune_options)
    rows, start, means = [], 0, {}
    rng = np.random.default_rng(seed)
    for label, models in groups.items():
        group = {e: a[start : start + len(models)] for e, a in accs.items()}
        rows += _summary(label, task.name, group)
        if bootstrap:
            means.update({(label, e): bootstrap_means(a.double().numpy(), bootstrap, rng) for e, a in group.items()})
        start += len(models)
    for row in rows if bootstrap else ():
        own = means[row["source"], row["epoch"]]
        row["ci"] = percentile_interval(own)
        if baseline in groups and row["source"] != baseline:
            at = row["epoch"] if baseline_epoch is None else int(baseline_epoch)
            key = f"vs_{baseline}" if baseline_epoch is None else f"vs_{baseline}_at_{at}"
            base = next(r for r in rows if r["source"] == baseline and r["epoch"] == at)
            row[key] = row["mean_acc"] - base["mean_acc"]
            row[f"{key}_ci"] = percentile_interval(own - means[baseline, at])
    return rows


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Rows of dicts -> a markdown table (floats rounded to `digits`)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(v):
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(cell(x) for x in v) + "]"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
