"""Linear probes: predict a model's properties (accuracy, epoch, hyperparameters) from a feature vector.

The same probes serve every feature set, so one table compares them on the same split:
"sane" (SANE embeddings), "stats" (s(W) weight statistics) and "weights" (the flat weights W).
("stats-gbt", gradient-boosted trees on s(W), is in downstream.trees.)

- Numeric properties: closed-form ridge regression with a bias. The penalty is picked from a grid
  (1e3 ... 1e-5, 17 values, METHOD.md §6) by validation R^2; one eigendecomposition of the
  training features' Gram matrix gives the whole penalty path.
- Categorical properties (activation, init, optimizer): a linear classifier, ridge regression on
  one-hot targets with argmax decision, penalty picked by validation accuracy.

Features are standardised with the training split's mean and standard deviation first, so one
penalty grid suits feature sets of very different scales (weight variances vs raw weights).

A `ProbeSet` holds the probes of one feature set; it is saved next to a checkpoint as
`probes/<features>.json` (metadata) + `probes/<features>.safetensors` (coefficients).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..files import atomic_write_bytes, atomic_write_json, resolve_file
from .scores import kendall_tau, r_squared

PENALTIES: tuple[float, ...] = tuple(float(p) for p in np.logspace(3, -5, 17))
# "stats-gbt": the s(W) features with gradient-boosted trees instead of a linear probe (downstream.trees).
FEATURE_SETS: tuple[str, ...] = ("sane", "stats", "stats-gbt", "weights")
PROBE_FORMAT_VERSION = 1


def ridge_path(x: torch.Tensor, y: torch.Tensor, penalties: Sequence[float] = PENALTIES):
    """Ridge regression with an unpenalised bias for every penalty at once.

    x: [n, d] features, y: [n, c] targets. Returns coefs [k, d, c] and biases [k, c] (float64),
    k = len(penalties), minimising ||x w + b - y||^2 + penalty * ||w||^2.
    """
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    # Centring removes the bias from the penalised problem. One eigendecomposition of the smaller
    # Gram matrix then gives every penalty's solution (cheaper than an SVD of the wide matrix):
    #   n <= d (dual):   w = xc^T U diag(1 / (e + p)) U^T yc,  xc xc^T = U diag(e) U^T
    #   n >  d (primal): w = V diag(1 / (e + p)) V^T xc^T yc,  xc^T xc = V diag(e) V^T
    dual = xc.shape[0] <= xc.shape[1]
    e, vecs = torch.linalg.eigh(xc @ xc.T if dual else xc.T @ xc)
    e = e.clamp_min(0)
    proj = vecs.T @ (yc if dual else xc.T @ yc)
    coefs = []
    for p in penalties:
        solved = vecs @ (proj / (e + p).unsqueeze(1))
        coefs.append(xc.T @ solved if dual else solved)
    coefs = torch.stack(coefs)
    biases = y_mean - torch.einsum("d,kdc->kc", x_mean, coefs)
    return coefs, biases


@dataclass
class LinearProbe:
    """A fitted linear probe for one property.

    kind "regression": coef [d, 1], predicts a float. kind "classification": coef [d, num_classes],
    predicts one of `classes`.
    """

    kind: str
    coef: torch.Tensor
    bias: torch.Tensor
    penalty: float
    classes: list | None = None
    validation: dict = field(default_factory=dict)

    def decision(self, z: torch.Tensor) -> torch.Tensor:
        """z: standardised features [n, d] -> scores [n, c]."""
        return z.double() @ self.coef.double() + self.bias.double()

    def predict(self, z: torch.Tensor) -> list:
        scores = self.decision(z)
        if self.kind == "regression":
            return scores[:, 0].tolist()
        return [self.classes[i] for i in scores.argmax(1).tolist()]


def _is_categorical(values: Sequence) -> bool:
    return any(isinstance(v, (str, bool, np.bool_)) for v in values)


def missing_targets(values: Sequence) -> np.ndarray:
    """[n] bool: which of a property's values are missing (None, NaN or infinite), as a zoo's metric
    is for a checkpoint that was not evaluated or diverged."""
    return np.array([v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)) for v in values], dtype=bool)


@dataclass
class ProbeSet:
    """Probes of one feature set: a shared feature standardisation and one `LinearProbe` per property."""

    features: str
    feature_mean: torch.Tensor
    feature_scale: torch.Tensor
    probes: dict[str, LinearProbe]
    info: dict = field(default_factory=dict)

    @property
    def properties(self) -> list[str]:
        return list(self.probes)

    @property
    def num_features(self) -> int:
        return int(self.feature_mean.numel())

    # ---- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        features: str,
        x_train: torch.Tensor,
        train_targets: Mapping[str, Sequence],
        x_val: torch.Tensor,
        val_targets: Mapping[str, Sequence],
        penalties: Sequence[float] = PENALTIES,
        info: Mapping | None = None,
    ) -> ProbeSet:
        """Fit one probe per property on the training rows, choose each penalty on the validation rows.

        x_train: [n_train, d], x_val: [n_val, d]; targets map a property name (a zoo column, e.g.
        "test_acc") to one value per row. Properties with strings or booleans get a classifier,
        numeric ones a ridge regression. Rows whose target is missing (None / NaN) are left out of
        that property's probe only, and counted in `info["left_out"][split][property]`.
        """
        x_train, x_val = _check_features(x_train, "x_train"), _check_features(x_val, "x_val")
        if x_train.shape[1] != x_val.shape[1]:
            raise ValueError(f"x_train has {x_train.shape[1]} features but x_val has {x_val.shape[1]}")
        if x_train.shape[0] < 2 or x_val.shape[0] < 1:
            raise ValueError("probing needs at least 2 training rows and 1 validation row")
        if not train_targets:
            raise ValueError("no properties to probe: pass at least one target column")
        mean = x_train.double().mean(0)
        scale = x_train.double().std(0, unbiased=False)
        # Constant features (e.g. an unused padding value) carry nothing; scale 1 keeps them at 0.
        scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
        z_train, z_val = (x_train.double() - mean) / scale, (x_val.double() - mean) / scale

        probes = {}
        info = dict(info or {})
        left_out = {split: dict(counts) for split, counts in info.get("left_out", {}).items()}
        for split in ("train", "validation"):
            left_out.setdefault(split, {})
        for name, train_values in train_targets.items():
            if name not in val_targets:
                raise ValueError(f"property {name!r} has training targets but no validation targets")
            train_values, val_values = list(train_values), list(val_targets[name])
            if len(train_values) != len(z_train) or len(val_values) != len(z_val):
                raise ValueError(
                    f"property {name!r}: {len(train_values)}/{len(val_values)} targets for "
                    f"{len(z_train)}/{len(z_val)} train/validation rows"
                )
            for split, values in (("train", train_values), ("validation", val_values)):
                if missing_targets(values).any():
                    left_out[split][name] = int(missing_targets(values).sum())
            if _is_categorical(train_values):
                probes[name] = _fit_classifier(name, z_train, train_values, z_val, val_values, penalties)
            else:
                probes[name] = _fit_regression(name, z_train, train_values, z_val, val_values, penalties)
        info["left_out"] = left_out
        info.setdefault("num_train", int(len(z_train)))
        info.setdefault("num_validation", int(len(z_val)))
        return cls(features, mean.float(), scale.float(), probes, info)

    # ---- use -----------------------------------------------------------------------------------
    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_features(x, "features")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"these probes were fitted on {self.num_features} {self.features!r} features, got {x.shape[1]}; "
                "embed with the same checkpoint and pooling the probes were fitted with"
            )
        return (x.double() - self.feature_mean.double()) / self.feature_scale.double()

    def _probe(self, name: str) -> LinearProbe:
        if name not in self.probes:
            raise ValueError(
                f"no probe for property {name!r} in the {self.features!r} probe set (fitted: {self.properties}); "
                f"refit with `hyperrep probe fit ... --properties {name}`"
            )
        return self.probes[name]

    def predict(self, x: torch.Tensor, properties: Sequence[str] | None = None) -> dict[str, list]:
        """features [n, d] -> {property: [n predictions]}."""
        names = list(properties) if properties is not None else self.properties
        probes = [self._probe(n) for n in names]
        z = self._standardise(x)
        return {n: p.predict(z) for n, p in zip(names, probes)}

    def evaluate(self, x: torch.Tensor, targets: Mapping[str, Sequence]) -> dict[str, dict]:
        """Scores on held-out rows: {property: {"r2", "kendall_tau"}} for regressions and
        {property: {"accuracy"}} for classifications."""
        predictions = self.predict(x, list(targets))
        return {name: property_score(self.probes[name].kind, values, predictions[name]) for name, values in targets.items()}

    # ---- files ---------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write probes/<features>.safetensors and probes/<features>.json inside `folder` (atomically)."""
        base = Path(folder) / "probes"
        tensors = {"feature_mean": self.feature_mean.float().contiguous(), "feature_scale": self.feature_scale.float().contiguous()}
        meta = {}
        for name, p in self.probes.items():
            tensors[f"{name}.coef"] = p.coef.double().contiguous()
            tensors[f"{name}.bias"] = p.bias.double().contiguous()
            meta[name] = {"kind": p.kind, "penalty": p.penalty, "classes": p.classes, "validation": p.validation}
        atomic_write_bytes(base / f"{self.features}.safetensors", save(tensors))
        # The JSON is written last: it is the index, so a reader finds it only once the weights are there.
        atomic_write_json(
            base / f"{self.features}.json",
            {"format_version": PROBE_FORMAT_VERSION, "features": self.features, "info": self.info, "probes": meta},
        )
        return base / f"{self.features}.json"

    @classmethod
    def load(cls, folder_or_repo: str | os.PathLike, features: str = "sane", revision: str | None = None) -> ProbeSet:
        """Load the probe set saved with `save` from a checkpoint folder or a Hub repo id (at `revision`)."""
        if features == "stats-gbt":
            raise ValueError("stats-gbt probes are trees, not a linear ProbeSet: load them with "
                             "downstream.trees.TreeProbeSet.load(folder_or_repo)")
        hint = f"fit the probes first: `hyperrep probe fit --checkpoint {folder_or_repo} --zoo ZOO --features {features}`"
        meta_path = resolve_file(folder_or_repo, f"probes/{features}.json", hint, revision)
        tensor_path = resolve_file(folder_or_repo, f"probes/{features}.safetensors", hint, revision)
        meta = json.loads(Path(meta_path).read_text())
        tensors = load_file(tensor_path)
        probes = {
            name: LinearProbe(m["kind"], tensors[f"{name}.coef"], tensors[f"{name}.bias"], m["penalty"], m["classes"], m["validation"])
            for name, m in meta["probes"].items()
        }
        return cls(meta["features"], tensors["feature_mean"], tensors["feature_scale"], probes, meta.get("info", {}))


def property_score(kind: str, values: Sequence, predictions: Sequence, kendall: bool = True) -> dict:
    """One property's score: {"accuracy"} for a classification, {"r2", "kendall_tau"} for a regression
    (rows with a missing target, None or NaN, left out; `kendall=False` skips tau)."""
    keep = ~missing_targets(values)
    if kind == "classification":
        pairs = [(a, b) for a, b, k in zip(values, predictions, keep) if k]
        return {"accuracy": float(np.mean([str(a) == str(b) for a, b in pairs])) if pairs else float("nan")}
    y, p = np.asarray(values, dtype=np.float64)[keep], np.asarray(predictions, dtype=np.float64)[keep]
    if len(y) == 0:
        return {"r2": float("nan"), **({"kendall_tau": float("nan")} if kendall else {})}
    score = {"r2": r_squared(y, p)}
    if kendall:
        score["kendall_tau"] = kendall_tau(y, p) if len(y) > 1 else float("nan")
    return score


def _check_features(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a [rows, features] matrix, got shape {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; probes need finite features")
    return x


def _fit_regression(name, z_train, train_values, z_val, val_values, penalties) -> LinearProbe:
    train_keep, val_keep = ~missing_targets(train_values), ~missing_targets(val_values)
    if train_keep.sum() < 2 or val_keep.sum() < 1:
        raise ValueError(f"property {name!r} has fewer than 2 finite training targets or no finite validation target")
    y_train = torch.as_tensor(np.asarray(train_values, dtype=np.float64)[train_keep]).unsqueeze(1)
    y_val = np.asarray(val_values, dtype=np.float64)[val_keep]
    coefs, biases = ridge_path(z_train[torch.as_tensor(train_keep)], y_train, penalties)
    zv = z_val[torch.as_tensor(val_keep)]
    val_r2 = [r_squared(y_val, (zv @ c + b)[:, 0].numpy()) for c, b in zip(coefs, biases)]
    # nan (constant validation targets) ranks lowest; ties keep the larger penalty (the grid runs large -> small).
    best = int(np.argmax(np.nan_to_num(val_r2, nan=-np.inf)))
    return LinearProbe("regression", coefs[best], biases[best], float(penalties[best]), None, {"r2": float(val_r2[best])})


def _fit_classifier(name, z_train, train_values, z_val, val_values, penalties) -> LinearProbe:
    train_keep, val_keep = ~missing_targets(train_values), ~missing_targets(val_values)
    if train_keep.sum() < 1 or val_keep.sum() < 1:
        raise ValueError(f"property {name!r} has no training or no validation target (all missing)")
    train_values = [v for v, k in zip(train_values, train_keep) if k]
    val_values = [v for v, k in zip(val_values, val_keep) if k]
    z_train, z_val = z_train[torch.as_tensor(train_keep)], z_val[torch.as_tensor(val_keep)]
    classes = sorted({v.item() if isinstance(v, np.generic) else v for v in train_values}, key=str)
    index = {str(c): i for i, c in enumerate(classes)}
    labels = torch.tensor([index[str(v)] for v in train_values])
    one_hot = torch.nn.functional.one_hot(labels, len(classes)).double()
    coefs, biases = ridge_path(z_train, one_hot, penalties)
    val_str = [str(v) for v in val_values]
    val_acc = [
        float(np.mean([str(classes[i]) == v for i, v in zip((z_val @ c + b).argmax(1).tolist(), val_str)]))
        for c, b in zip(coefs, biases)
    ]
    best = int(np.argmax(val_acc))
    return LinearProbe("classification", coefs[best], biases[best], float(penalties[best]), classes, {"accuracy": val_acc[best]})
