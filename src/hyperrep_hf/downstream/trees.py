"""Gradient-boosted trees on s(W): the "stats-gbt" baseline, after Unterthiner et al. 2020, who
predict a model's accuracy from per-layer weight statistics with gradient-boosted trees.

One sklearn HistGradientBoostingRegressor (numeric property) or HistGradientBoostingClassifier
(categorical property) per property, on the same s(W) features as the linear "stats" probe. The
hyperparameters are chosen on the validation split: every combination of GBT_GRID, and for each
the number of boosting iterations (1 ... GBT_MAX_ITER) by the validation score of every stage
(`staged_predict`); the best combination is refitted with its iteration count. Validation R^2
for regressions, accuracy for classifications; ties keep the earlier combination and the fewer
iterations. Fits are seeded and deterministic (no early stopping, no subsampling).

Trees are not saved: storing sklearn estimators would need pickle, which this library never reads.
`TreeProbeSet` therefore lives in memory; `probe_table` and `hyperrep probe eval --features
stats-gbt` fit and score it in place.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .probes import _check_features, _is_categorical, missing_targets
from .scores import r_squared

GBT_FEATURES = "stats-gbt"
# A small grid around sklearn's defaults (learning rate 0.1, 31 leaves, 20 rows per leaf); small
# leaves matter on zoos of a few dozen training rows, where 20 rows per leaf allows hardly a split.
GBT_GRID: dict[str, tuple] = {"learning_rate": (0.05, 0.2), "max_leaf_nodes": (7, 31), "min_samples_leaf": (5, 20)}
GBT_MAX_ITER = 200


@dataclass
class TreeProbe:
    """A fitted gradient-boosted-trees probe for one property: `model` (a fitted sklearn estimator),
    the chosen `hyperparameters` (max_iter included), `classes` for a classification (the model
    predicts class indices) and its `validation` score."""

    kind: str
    model: object
    hyperparameters: dict
    classes: list | None = None
    validation: dict = field(default_factory=dict)
    penalty = None  # a linear probe's field; trees have none

    def predict(self, x: np.ndarray) -> list:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):  # see _fit_property
            predicted = self.model.predict(x)
        if self.kind == "regression":
            return [float(v) for v in predicted]
        return [self.classes[int(i)] for i in predicted]


@dataclass
class TreeProbeSet:
    """Gradient-boosted-trees probes of one feature set (s(W)): one `TreeProbe` per property. The
    same `predict` / `properties` / `info` as a ProbeSet; it cannot be saved (see the module)."""

    features: str
    probes: dict[str, TreeProbe]
    info: dict = field(default_factory=dict)

    @property
    def properties(self) -> list[str]:
        return list(self.probes)

    @classmethod
    def fit(cls, features: str, x_train: torch.Tensor, train_targets: Mapping[str, Sequence], x_val: torch.Tensor,
            val_targets: Mapping[str, Sequence], info: Mapping | None = None, seed: int = 0,
            grid: Mapping[str, Sequence] = GBT_GRID, max_iter: int = GBT_MAX_ITER) -> TreeProbeSet:
        """Fit one tree ensemble per property on the training rows [n_train, d], choosing its
        hyperparameters on the validation rows [n_val, d] (see the module). Rows whose target is
        missing (None / NaN) are left out of that property's probe and counted in
        `info["left_out"][split][property]`, as for a ProbeSet."""
        x_train = _check_features(x_train, "x_train").double().numpy()
        x_val = _check_features(x_val, "x_val").double().numpy()
        if x_train.shape[1] != x_val.shape[1]:
            raise ValueError(f"x_train has {x_train.shape[1]} features but x_val has {x_val.shape[1]}")
        if not train_targets:
            raise ValueError("no properties to probe: pass at least one target column")
        info = dict(info or {})
        left_out = {split: dict(counts) for split, counts in info.get("left_out", {}).items()}
        probes = {}
        for name, train_values in train_targets.items():
            if name not in val_targets:
                raise ValueError(f"property {name!r} has training targets but no validation targets")
            train_values, val_values = list(train_values), list(val_targets[name])
            if len(train_values) != len(x_train) or len(val_values) != len(x_val):
                raise ValueError(f"property {name!r}: {len(train_values)}/{len(val_values)} targets for "
                                 f"{len(x_train)}/{len(x_val)} train/validation rows")
            keep_train, keep_val = ~missing_targets(train_values), ~missing_targets(val_values)
            for split, keep in (("train", keep_train), ("validation", keep_val)):
                if (~keep).any():
                    left_out.setdefault(split, {})[name] = int((~keep).sum())
            if keep_train.sum() < 2 or keep_val.sum() < 1:
                raise ValueError(f"property {name!r} has fewer than 2 training targets or no validation target")
            train_values = [v for v, k in zip(train_values, keep_train) if k]
            val_values = [v for v, k in zip(val_values, keep_val) if k]
            probes[name] = _fit_property(x_train[keep_train], train_values, x_val[keep_val], val_values,
                                         _is_categorical(train_values), seed, grid, max_iter)
        info["left_out"] = left_out
        info.setdefault("num_train", int(len(x_train)))
        info.setdefault("num_validation", int(len(x_val)))
        info.update({"pooling": None, "permutations": 0, "seed": int(seed), "grid": {k: list(v) for k, v in grid.items()},
                     "max_iter": int(max_iter)})
        return cls(features, probes, info)

    def _probe(self, name: str) -> TreeProbe:
        if name not in self.probes:
            raise ValueError(f"no probe for property {name!r} in the {self.features!r} probe set (fitted: "
                             f"{self.properties}); fit it with that property")
        return self.probes[name]

    def predict(self, x: torch.Tensor, properties: Sequence[str] | None = None) -> dict[str, list]:
        """features [n, d] -> {property: [n predictions]}."""
        names = list(properties) if properties is not None else self.properties
        probes = [self._probe(n) for n in names]
        z = _check_features(x, "features").double().numpy()
        return {n: p.predict(z) for n, p in zip(names, probes)}

    def save(self, folder) -> None:
        raise ValueError("stats-gbt probes are table-only: sklearn trees cannot be saved without pickle, which this "
                         "library never reads. Score them with `hyperrep probe eval --features stats-gbt` or "
                         "probe_table(..., feature_sets=('stats-gbt', ...)), which fit them in place")


def _fit_property(x_train, train_values, x_val, val_values, categorical: bool, seed: int, grid, max_iter: int) -> TreeProbe:
    # One OpenMP thread: a zoo's table is small (hundreds of rows, tens of features), where sklearn's
    # threads cost more in synchronisation than they gain; on a busy 2-core machine a 300-row fit
    # took 30 s with them and 0.2 s without.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        return _fit_grid(x_train, train_values, x_val, val_values, categorical, seed, grid, max_iter)


def _fit_grid(x_train, train_values, x_val, val_values, categorical: bool, seed: int, grid, max_iter: int) -> TreeProbe:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if categorical:
        classes = sorted({v.item() if isinstance(v, np.generic) else v for v in train_values}, key=str)
        index = {str(c): i for i, c in enumerate(classes)}
        y_train = np.array([index[str(v)] for v in train_values])
        val_str = np.array([str(v) for v in val_values])
        if len(classes) == 1:  # one class: nothing to learn, the trees would refuse
            from sklearn.dummy import DummyClassifier

            model = DummyClassifier(strategy="most_frequent").fit(x_train, y_train)
            return TreeProbe("classification", model, {"constant": True}, classes,
                             {"accuracy": float(np.mean(val_str == str(classes[0])))})
        estimator = HistGradientBoostingClassifier
        score = lambda predicted: float(np.mean(np.array([str(classes[i]) for i in predicted]) == val_str))  # noqa: E731
        metric = "accuracy"
    else:
        classes, y_train = None, np.asarray(train_values, dtype=np.float64)
        y_val = np.asarray(val_values, dtype=np.float64)
        estimator = HistGradientBoostingRegressor
        score = lambda predicted: r_squared(y_val, predicted)  # noqa: E731
        metric = "r2"
    best = None
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values))
        model = estimator(max_iter=max_iter, early_stopping=False, random_state=seed, **params).fit(x_train, y_train)
        # nan (constant validation targets) ranks lowest; the strict > keeps the earlier / shorter one on ties
        for iterations, predicted in enumerate(model.staged_predict(x_val), start=1):
            value = score(predicted)
            value = -np.inf if np.isnan(value) else value
            if best is None or value > best[0]:
                best = (value, {**params, "max_iter": iterations})
    params = best[1]
    model = estimator(early_stopping=False, random_state=seed, **params).fit(x_train, y_train)
    validation = score(model.predict(x_val))
    return TreeProbe("classification" if categorical else "regression", model, params, classes, {metric: validation})
