"""Result tables: probes of SANE vs s(W) vs W on one split, and sampled vs from-scratch vs zoo models.

    from hyperrep_hf.downstream.evaluation import probe_table, generation_table, format_table
    rows = probe_table(zoo, checkpoint="checkpoints/sane")          # list of dicts
    print(format_table(rows))                                        # markdown
    rows = generation_table("checkpoints/sane", zoo, methods=("kde30", "sub"), epochs=(0, 1, 5))

Every probe is fitted on the zoo's train split, its penalty chosen on validation, scored on test.
SANE features are permutation-averaged embeddings (downstream.embedding) over PROBE_PERMUTATIONS
permutations by default, where the checkpoint knows the architecture's permutation spec.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..zoo.architectures import build_model, init_weights
from .embedding import embed_flat
from .generation import ModelGenerator, find_layout, load_checkpoint
from .probes import FEATURE_SETS, ProbeSet, property_score
from .scores import model_bootstrap, percentile_interval

DEFAULT_PROPERTIES = ("test_acc", "epoch", "ggap")
CATEGORICAL_HYPERPARAMETERS = ("activation", "init", "optimizer")
NUMERIC_HYPERPARAMETERS = ("lr", "weight_decay", "dropout")
# Permutations a probe's SANE embedding is averaged over by default. Test R^2 of test_acc / epoch
# on the 100-model mnist-seed zoo (README): 0: 0.931 / 0.966, 8: 0.969 / 0.970; on a 64-model one:
# 0: 0.929 / 0.961, 4: 0.961 / 0.979, 16: 0.955 / 0.978.
PROBE_PERMUTATIONS = 8


# ------------------------------------------------------------------------------------ features
def zoo_properties(zoo, properties: Sequence[str] | None = None) -> list[str]:
    """The properties to probe: the given ones (checked against the zoo's columns), or test accuracy,
    epoch, generalisation gap and every hyperparameter the zoo varies (activation, lr, ...)."""
    columns = set(zoo.dataset["train"].column_names)
    if properties is None:
        varied = [v for v in zoo.info.get("varied", []) if v in CATEGORICAL_HYPERPARAMETERS + NUMERIC_HYPERPARAMETERS]
        properties = [p for p in DEFAULT_PROPERTIES if p in columns] + varied
    missing = [p for p in properties if p not in columns or p == "weights"]
    if missing:
        raise ValueError(f"the zoo has no column(s) {missing} to probe; columns: {sorted(columns - {'weights'})}")
    return list(properties)


def zoo_targets(zoo, split: str, properties: Sequence[str]) -> dict[str, list]:
    """{property: one value per row of `split`} from the zoo's metadata columns."""
    meta = zoo.metadata(split, list(properties))
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
                 batch_size: int = 64, progress: bool = False, permutations: int = 0) -> torch.Tensor:
    """One feature vector per row of a zoo split: "sane" (embeddings; needs model and tokenizer;
    averaged over `permutations` neuron permutations), "stats" (s(W) statistics) or "weights" (the
    flat weights W). Returns [rows, d]."""
    if features not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {features!r}; choose one of {list(FEATURE_SETS)}")
    weights = zoo.weights(split)
    if features == "weights":
        return weights.float()
    if features == "stats":
        from ..weightspace.statistics import weight_statistics

        return weight_statistics(weights, zoo.layout)[0]
    if model is None or tokenizer is None:
        raise ValueError("SANE features need the checkpoint: pass model and tokenizer (or checkpoint=FOLDER)")
    layout_id = find_layout(tokenizer, zoo.layout)
    return embed_flat(model, tokenizer, weights, pooling, layout_id, batch_size, progress=progress,
                      permutations=permutations)


def fit_probes(zoo, features: str = "sane", checkpoint=None, model=None, tokenizer=None,
               properties: Sequence[str] | None = None, pooling: str = "mean", progress: bool = False,
               permutations: int | None = None) -> ProbeSet:
    """Fit a ProbeSet of one feature set on the zoo's train split (penalties chosen on validation).
    SANE features average over `permutations` (None: see `probe_permutations`); the number is
    saved with the probes, and the property-prediction pipeline embeds the same way."""
    if features == "sane" and (model is None or tokenizer is None):
        if checkpoint is None:
            raise ValueError("SANE probes need a checkpoint: pass checkpoint=FOLDER (or model and tokenizer)")
        model, tokenizer = load_checkpoint(checkpoint)
    properties = zoo_properties(zoo, properties)
    permutations = probe_permutations(tokenizer, zoo, permutations, pooling) if features == "sane" else 0
    x = {s: zoo_features(zoo, s, features, model, tokenizer, pooling, progress=progress, permutations=permutations)
         for s in ("train", "validation")}
    info = {"pooling": pooling if features == "sane" else None, "permutations": permutations,
            "zoo": str(getattr(zoo, "path", "")), "checkpoint": None if checkpoint is None else str(checkpoint)}
    return ProbeSet.fit(features, x["train"], zoo_targets(zoo, "train", properties),
                        x["validation"], zoo_targets(zoo, "validation", properties), info=info)


def probe_table(zoo, checkpoint=None, feature_sets: Sequence[str] = FEATURE_SETS, properties: Sequence[str] | None = None,
                pooling: str = "mean", split: str = "test", progress: bool = False,
                permutations: int | None = None, bootstrap: int = 0, seed: int = 0) -> list[dict]:
    """Fit probes on train (penalty chosen on validation) for each feature set, score them on `split`.

    Rows: {"features", "property", "metric" ("r2" or "accuracy"), "value", "kendall_tau", "penalty",
    "validation"}. "sane" needs `checkpoint` (it is skipped when None, so the baselines alone work).
    With `bootstrap=B` > 0 every row also gets "ci", the 95% interval of its value over B resamples of
    the split's models (`add_bootstrap_intervals`), and rows of the other feature sets the paired
    difference to s(W): "vs_stats" and "vs_stats_ci".
    """
    model = tokenizer = None
    rows, predictions = [], {}
    properties = zoo_properties(zoo, properties)
    targets = zoo_targets(zoo, split, properties)
    for features in feature_sets:
        if features == "sane":
            if checkpoint is None:
                continue
            model, tokenizer = load_checkpoint(checkpoint)
        probes = fit_probes(zoo, features, checkpoint, model, tokenizer, properties, pooling, progress, permutations)
        x = zoo_features(zoo, split, features, model, tokenizer, pooling, progress=progress,
                         permutations=probes.info["permutations"])
        rows += score_probes(probes, x, targets, properties, predictions)
    if bootstrap:
        add_bootstrap_intervals(rows, predictions, targets, zoo.metadata(split, ["model_id"])["model_id"], bootstrap, seed)
    return rows


def score_probes(probes: ProbeSet, x: torch.Tensor, targets: dict, properties: Sequence[str],
                 predictions: dict | None = None) -> list[dict]:
    """Probe-table rows of one probe set on features x [rows, d]: {"features", "property", "metric",
    "value", "kendall_tau", "penalty", "validation"} per property. The predictions are also stored
    in `predictions[(features, property)]` when given (for `add_bootstrap_intervals`)."""
    predicted = probes.predict(x, properties)
    rows = []
    for name in properties:
        probe = probes.probes[name]
        score = property_score(probe.kind, targets[name], predicted[name])
        metric = "accuracy" if probe.kind == "classification" else "r2"
        if predictions is not None:
            predictions[probes.features, name] = predicted[name]
        rows.append({
            "features": probes.features, "property": name, "metric": metric, "value": score[metric],
            "kendall_tau": score.get("kendall_tau"), "penalty": probe.penalty,
            "validation": next(iter(probe.validation.values())),
        })
    return rows


def add_bootstrap_intervals(rows: list[dict], predictions: dict, targets: dict, groups, resamples: int = 1000,
                            seed: int = 0, baseline: str = "stats", level: float = 0.95) -> list[dict]:
    """Add model-level bootstrap intervals to probe-table rows (in place; returns them).

    predictions: {(features, property): one prediction per row}; targets: {property: values};
    groups: the rows' model ids (a model's checkpoints are resampled together). Every row gets
    "ci" = [low, high], the central `level` interval of its value over `resamples` resamples of
    the models; a row of another feature set than `baseline` also gets "vs_<baseline>" (its value
    minus the baseline's) and "vs_<baseline>_ci", the interval of that difference on the same
    resamples (paired: it is narrower than the two "ci" suggest, and excludes 0 where the
    difference holds beyond the choice of test models).
    """
    draws = model_bootstrap(groups, resamples, seed)
    cache = {}

    def resampled(features: str, name: str, metric: str) -> np.ndarray:
        if (features, name) not in cache:
            kind = "classification" if metric == "accuracy" else "regression"
            y, p = np.asarray(targets[name]), np.asarray(predictions[features, name])
            cache[features, name] = np.array([property_score(kind, y[d], p[d], kendall=False)[metric] for d in draws])
        return cache[features, name]

    values = {(r["features"], r["property"]): r["value"] for r in rows}
    for row in rows:
        own = resampled(row["features"], row["property"], row["metric"])
        row["ci"] = percentile_interval(own, level)
        if row["features"] != baseline and (baseline, row["property"]) in predictions:
            row[f"vs_{baseline}"] = row["value"] - values[baseline, row["property"]]
            row[f"vs_{baseline}_ci"] = percentile_interval(own - resampled(baseline, row["property"], row["metric"]), level)
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


def scratch_models(zoo, num_models: int, seed: int = 0) -> list[nn.Module]:
    """Fresh models of the zoo's architecture, initialised like the zoo's (its "init" hyperparameter)."""
    init = _zoo_hyperparameter(zoo, "init", "default")
    out = []
    for i in range(num_models):
        g = torch.Generator().manual_seed(seed + i)
        torch.manual_seed(seed + i)  # layers without an explicit init use the global generator
        out.append(init_weights(build_model(zoo.architecture, **zoo.architecture_kwargs), init, generator=g))
    return out


def zoo_models(zoo, num_models: int, split: str = "test") -> list[nn.Module]:
    """The zoo's own models of `split` at its last epoch (not diverged), the first `num_models`."""
    meta = zoo.metadata(split)
    rows = np.flatnonzero((meta["epoch"] == meta["epoch"].max()).to_numpy() & ~meta["diverged"].astype(bool).to_numpy())
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
                     samples: dict[str, Sequence[nn.Module]] | None = None, **finetune_options) -> list[dict]:
    """Accuracy of sampled models vs the same architecture from scratch vs the zoo's own models,
    after fine-tuning for each of `epochs` on `task` (default: the zoo's task; another task name or
    TaskData measures transfer, e.g. a digits zoo prompting a Fashion-MNIST task).

    Rows: {"source" (a method, "scratch" or "zoo"), "task", "epoch", "mean_acc", "std_acc",
    "num_models"}. Fine-tuning uses the zoo's optimizer and learning rate unless given.
    `samples` ({label: models}) adds models sampled beforehand (e.g. by the pipeline).
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
    finetune_options.setdefault("optimizer", _zoo_hyperparameter(zoo, "optimizer", "adam"))
    finetune_options.setdefault("lr", _zoo_hyperparameter(zoo, "lr", 1e-3))
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
    # One population for all groups: same-architecture models fine-tune together in one stacked pass.
    everything = [m for models in groups.values() for m in models]
    accs = finetune_accuracy(everything, task, epochs, seed, **finetune_options)
    rows, start = [], 0
    for label, models in groups.items():
        rows += _summary(label, task.name, {e: a[start : start + len(models)] for e, a in accs.items()})
        start += len(models)
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
