"""Gradient-boosted trees on s(W): the "stats-gbt" baseline, after Unterthiner et al. 2020, who
predict a model's accuracy from per-layer weight statistics with gradient-boosted trees.

One sklearn HistGradientBoostingRegressor (numeric property) or HistGradientBoostingClassifier
(categorical property) per property, on the same s(W) features as the linear "stats" probe. The
hyperparameters are chosen on the validation split: every combination of GBT_GRID, and for each
the number of boosting iterations (1 ... GBT_MAX_ITER) by the validation score of every stage
(`staged_predict`); the best combination is refitted with its iteration count. Validation R^2
for regressions, accuracy for classifications; ties keep the earlier combination and the fewer
iterations. Fits are seeded and deterministic (no early stopping, no subsampling).

The fitted trees are kept as plain arrays (`TreeEnsemble`: per node its feature, threshold, children
and leaf value), which predict with numpy alone and are saved with safetensors, never pickle:
`TreeProbeSet.save(folder)` writes probes/stats-gbt.safetensors + probes/stats-gbt.json (the layout of
a linear ProbeSet), `TreeProbeSet.load` reads them from a folder or a Hub repo. Fitting needs
scikit-learn (the installed package); predicting a saved set needs numpy only (remote code).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..files import atomic_write_bytes, atomic_write_json, resolve_file
from .probes import PROBE_FORMAT_VERSION, _check_features, _is_categorical, missing_targets
from .scores import r_squared

GBT_FEATURES = "stats-gbt"
# A small grid around sklearn's defaults (learning rate 0.1, 31 leaves, 20 rows per leaf); small
# leaves matter on zoos of a few dozen training rows, where 20 rows per leaf allows hardly a split.
GBT_GRID: dict[str, tuple] = {"learning_rate": (0.05, 0.2), "max_leaf_nodes": (7, 31), "min_samples_leaf": (5, 20)}
GBT_MAX_ITER = 200


# the arrays of a TreeEnsemble, in the order they are saved
_ARRAYS = ("feature", "threshold", "left", "right", "value", "is_leaf", "missing_left", "roots", "baseline")


@dataclass
class TreeEnsemble:
    """Fitted gradient-boosted trees as arrays. Nodes of all trees side by side, [nodes] each:
    `feature` (int), `threshold` (go left if x[feature] <= threshold), `left` / `right` (node indices),
    `value` (a leaf's contribution), `is_leaf`, `missing_left` (where a NaN feature goes); `roots`
    [iterations, K] (each tree's root node) and `baseline` [K] (the starting raw score). K is 1 for a
    regression or a two-class classification, the number of classes otherwise."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    is_leaf: np.ndarray
    missing_left: np.ndarray
    roots: np.ndarray
    baseline: np.ndarray

    @classmethod
    def from_sklearn(cls, model) -> TreeEnsemble:
        """The trees of a fitted sklearn HistGradientBoostingRegressor / -Classifier (numeric features)."""
        parts, offsets, roots, start = [], [], [], 0
        for iteration in model._predictors:
            roots.append([])
            for tree in iteration:
                if tree.nodes["is_categorical"].any():
                    raise ValueError("categorical splits are not supported: s(W) features are numeric")
                roots[-1].append(start)
                parts.append(tree.nodes)
                offsets.append(np.full(len(tree.nodes), start))
                start += len(tree.nodes)
        nodes, base = np.concatenate(parts), np.concatenate(offsets)  # a tree's child indices are its own
        return cls(feature=nodes["feature_idx"].astype(np.int64), threshold=nodes["num_threshold"].astype(np.float64),
                   left=nodes["left"].astype(np.int64) + base, right=nodes["right"].astype(np.int64) + base,
                   value=nodes["value"].astype(np.float64), is_leaf=nodes["is_leaf"].astype(bool),
                   missing_left=nodes["missing_go_to_left"].astype(bool), roots=np.asarray(roots, dtype=np.int64),
                   baseline=np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1))

    def raw(self, x: np.ndarray) -> np.ndarray:
        """features [n, d] -> raw scores [n, K]: the baseline plus every tree's leaf value."""
        x = np.asarray(x, dtype=np.float64)
        split = self.feature[~self.is_leaf]
        if x.ndim != 2 or (len(split) and x.shape[1] <= split.max()):
            raise ValueError(f"these trees split on feature {int(split.max()) if len(split) else 0} of each row; got "
                             f"features of shape {list(x.shape)}: pass the s(W) statistics they were fitted on")
        out = np.tile(self.baseline, (len(x), 1))
        rows = np.arange(len(x))
        for iteration in self.roots:
            for k, root in enumerate(iteration):
                node = np.full(len(x), root)
                inner = ~self.is_leaf[node]
                while inner.any():
                    at, r = node[inner], rows[inner]
                    v = x[r, self.feature[at]]
                    go_left = np.where(np.isnan(v), self.missing_left[at], v <= self.threshold[at])
                    node[inner] = np.where(go_left, self.left[at], self.right[at])
                    inner = ~self.is_leaf[node]
                out[:, k] += self.value[node]
        return out

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in _ARRAYS}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str) -> TreeEnsemble:
        return cls(**{name: tensors[f"{prefix}.{name}"].numpy() for name in _ARRAYS})


@dataclass
class TreeProbe:
    """A fitted gradient-boosted-trees probe for one property: `trees` (a TreeEnsemble; None for a
    constant classification, whose train split had one class), the chosen `hyperparameters`
    (max_iter included), `classes` for a classification and its `validation` score."""

    kind: str
    trees: TreeEnsemble | None
    hyperparameters: dict
    classes: list | None = None
    validation: dict = field(default_factory=dict)
    penalty = None  # a linear probe's field; trees have none

    def predict(self, x: np.ndarray) -> list:
        if self.trees is None:
            return [self.classes[0]] * len(x)
        raw = self.trees.raw(x)
        if self.kind == "regression":
            return [float(v) for v in raw[:, 0]]
        index = (raw[:, 0] > 0).astype(int) if raw.shape[1] == 1 else raw.argmax(1)
        return [self.classes[int(i)] for i in index]


@dataclass
class TreeProbeSet:
    """Gradient-boosted-trees probes of one feature set (s(W)): one `TreeProbe` per property. The
    same `predict` / `properties` / `info` / `save` as a ProbeSet (see the module)."""

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

    def save(self, folder: str | os.PathLike, stem: str | None = None) -> Path:
        """Write probes/STEM.safetensors (the trees' arrays) and probes/STEM.json inside `folder`
        (atomically; the JSON, the index, last). STEM: the feature set (default)."""
        base, stem = Path(folder) / "probes", stem or self.features
        tensors, meta = {}, {}
        for name, p in self.probes.items():
            if p.trees is not None:
                tensors.update(p.trees.tensors(name))
            meta[name] = {"kind": p.kind, "hyperparameters": p.hyperparameters, "classes": p.classes,
                          "validation": p.validation, "constant": p.trees is None}
        atomic_write_bytes(base / f"{stem}.safetensors", save(tensors))
        atomic_write_json(base / f"{stem}.json", {"format_version": PROBE_FORMAT_VERSION, "features": self.features,
                                                  "info": self.info, "probes": meta})
        return base / f"{stem}.json"

    @classmethod
    def load(cls, folder_or_repo: str | os.PathLike, features: str = GBT_FEATURES,
             revision: str | None = None) -> TreeProbeSet:
        """Load a set saved with `save` (as `features`: its file stem) from a checkpoint folder or a Hub repo
        id (at `revision`)."""
        hint = (f"fit the trees first: `hyperrep probe fit --checkpoint {folder_or_repo} --zoo ZOO --features "
                f"{features.removesuffix('-trees')}`")
        meta = json.loads(Path(resolve_file(folder_or_repo, f"probes/{features}.json", hint, revision)).read_text())
        tensors = load_file(resolve_file(folder_or_repo, f"probes/{features}.safetensors", hint, revision))
        probes = {name: TreeProbe(m["kind"], None if m["constant"] else TreeEnsemble.from_tensors(tensors, name),
                                  m["hyperparameters"], m["classes"], m["validation"])
                  for name, m in meta["probes"].items()}
        return cls(meta["features"], probes, meta.get("info", {}))


def _fit_property(x_train, train_values, x_val, val_values, categorical: bool, seed: int, grid, max_iter: int) -> TreeProbe:
    # One OpenMP thread: a zoo's table is small (hundreds of rows, tens of features), where sklearn's
    # threads cost more in synchronisation than they gain; on a busy 2-core machine a 300-row fit
    # took 30 s with them and 0.2 s without.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as err:  # remote code without the package: a saved set predicts, fitting needs sklearn
        raise ImportError("fitting s(W)+GBT needs scikit-learn: pip install hyperrep_hf") from err

    with threadpool_limits(limits=1, user_api="openmp"):
        return _fit_grid(x_train, train_values, x_val, val_values, categorical, seed, grid, max_iter)


def _fit_grid(x_train, train_values, x_val, val_values, categorical: bool, seed: int, grid, max_iter: int) -> TreeProbe:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    except ImportError as err:
        raise ImportError("fitting s(W)+GBT needs scikit-learn: pip install hyperrep_hf") from err

    if categorical:
        classes = sorted({v.item() if isinstance(v, np.generic) else v for v in train_values}, key=str)
        index = {str(c): i for i, c in enumerate(classes)}
        y_train = np.array([index[str(v)] for v in train_values])
        val_str = np.array([str(v) for v in val_values])
        if len(classes) == 1:  # one class: nothing to learn, the trees would refuse
            return TreeProbe("classification", None, {"constant": True}, classes,
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
    return TreeProbe("classification" if categorical else "regression", TreeEnsemble.from_sklearn(model), params,
                     classes, {metric: validation})
