"""A fine-tuned SANE head and the s(W) trees combined: the "sane-finetuned+stats-gbt" feature set.

Per property, the prediction is w * head + (1 - w) * trees, with the head weight w chosen on the
validation split from BLEND_WEIGHTS (R^2; ties keep the smaller w, the trees-leaning one). A
classification takes the head's or the trees' labels, whichever has the better validation accuracy
(w is 1 or 0). Both parts are fitted before and without the test split: the head is fine-tuned on
train (early stopping on validation), the trees fitted on train (hyperparameters chosen on
validation), so the weight is one more setting chosen on validation.

Features are the head's outputs and the s(W) statistics side by side, [rows, num_outputs + d].
probe_table and `hyperrep probe eval` build a blend in place; `save(folder)` writes it next to its
head (`hyperrep probe fit --features sane-finetuned+stats-gbt --checkpoint HEAD`), as
probes/sane-finetuned+stats-gbt.json (the weights) and the trees' probes/sane-finetuned+stats-gbt-trees.*,
and the property pipeline of that checkpoint then predicts with the blend (`BlendedProbeSet.load`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_json, resolve_file
from .probes import PROBE_FORMAT_VERSION, missing_targets, property_score
from .trees import TreeProbeSet

BLEND_FEATURES = "sane-finetuned+stats-gbt"
BLEND_TREES = f"{BLEND_FEATURES}-trees"  # the file stem of a saved blend's trees
# The head's share of a regression prediction, fixed before any zoo was scored with it.
BLEND_WEIGHTS = tuple(i / 10 for i in range(11))


@dataclass
class BlendProbe:
    """One property's blend: its `kind`, the head weight w (hyperparameters["head_weight"]) and the
    blended `validation` score."""

    kind: str
    hyperparameters: dict
    validation: dict
    penalty = None  # a linear probe's field; a blend has none


@dataclass
class BlendedProbeSet:
    """`head` (a FinetunedHead) and `trees` (a TreeProbeSet on s(W)) blended per property. The same
    `predict` / `properties` / `info` / `save` as a ProbeSet."""

    head: object
    trees: object
    probes: dict[str, BlendProbe]
    info: dict = field(default_factory=lambda: {"pooling": None, "permutations": 0})
    features = BLEND_FEATURES

    @property
    def properties(self) -> list[str]:
        return list(self.probes)

    @property
    def model(self):
        """The head's SaneForPropertyPrediction (with `tokenizer`: what the features need)."""
        return self.head.model

    @property
    def tokenizer(self):
        return self.head.tokenizer

    @property
    def num_head_outputs(self) -> int:
        return sum(self.head.model.output_sizes)

    @classmethod
    def fit(cls, head, trees, x_val: torch.Tensor, val_targets: Mapping[str, Sequence]) -> BlendedProbeSet:
        """Choose each property's head weight on the validation rows x_val [n, num_outputs + d]
        (head outputs, then s(W)); properties: those both the head and the trees predict."""
        names = [n for n in head.properties if n in trees.probes]
        if not names:
            raise ValueError(f"the fine-tuned head predicts {head.properties} and the trees {trees.properties}: "
                             "no property in common to blend; fit the trees on the head's properties")
        blend = cls(head, trees, {})
        parts = blend._parts(x_val, names)
        for name in names:
            keep = ~missing_targets(val_targets[name])
            y = [v for v, k in zip(val_targets[name], keep) if k]
            head_p, tree_p = (np.asarray(p[name], dtype=object)[keep] for p in parts)
            kind = head.probes[name].kind
            weights = BLEND_WEIGHTS if kind == "regression" else (0.0, 1.0)
            metric = "r2" if kind == "regression" else "accuracy"
            best = None
            for w in weights:
                score = property_score(kind, y, _mix(kind, w, head_p, tree_p), kendall=False)[metric]
                score = -np.inf if np.isnan(score) else score
                if best is None or score > best[0]:
                    best = (score, w)
            blend.probes[name] = BlendProbe(kind, {"head_weight": best[1]}, {metric: best[0]})
        return blend

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the blend into its head's checkpoint `folder`: the trees, then (last: the index)
        probes/sane-finetuned+stats-gbt.json with each property's head weight."""
        self.trees.save(folder, BLEND_TREES)
        meta = {n: {"kind": b.kind, "head_weight": b.hyperparameters["head_weight"], "validation": b.validation}
                for n, b in self.probes.items()}
        path = Path(folder) / "probes" / f"{BLEND_FEATURES}.json"
        atomic_write_json(path, {"format_version": PROBE_FORMAT_VERSION, "features": BLEND_FEATURES, "info": self.info,
                                 "probes": meta})
        return path

    @classmethod
    def load(cls, folder_or_repo: str | os.PathLike, head=None, revision: str | None = None) -> BlendedProbeSet:
        """The blend saved in a fine-tuned checkpoint folder or Hub repo; `head`: its FinetunedHead
        (None: loaded from the same checkpoint)."""
        hint = (f"fit it first: `hyperrep probe fit --checkpoint {folder_or_repo} --zoo ZOO --features "
                f"{BLEND_FEATURES}`")
        meta = json.loads(Path(resolve_file(folder_or_repo, f"probes/{BLEND_FEATURES}.json", hint, revision)).read_text())
        if head is None:
            from .head import FinetunedHead

            head = FinetunedHead.load(folder_or_repo, revision=revision)
        unknown = [n for n in meta["probes"] if n not in head.properties]
        if unknown:
            raise ValueError(f"the blend in {folder_or_repo} predicts {unknown}, which its head does not "
                             f"({head.properties}); refit it with `hyperrep probe fit --features {BLEND_FEATURES}`")
        probes = {n: BlendProbe(m["kind"], {"head_weight": m["head_weight"]}, m["validation"])
                  for n, m in meta["probes"].items()}
        return cls(head, TreeProbeSet.load(folder_or_repo, BLEND_TREES, revision), probes, meta.get("info", {}))

    def _parts(self, x: torch.Tensor, names: Sequence[str]) -> tuple[dict, dict]:
        k = self.num_head_outputs
        if x.shape[1] <= k:
            raise ValueError(f"blend features need the head's {k} outputs and the s(W) statistics side by side; "
                             f"got {x.shape[1]} columns")
        return self.head.predict(x[:, :k], names), self.trees.predict(x[:, k:], names)

    def predict(self, x: torch.Tensor, properties: Sequence[str] | None = None) -> dict[str, list]:
        """features [n, num_outputs + d] -> {property: [n predictions]}."""
        names = self.properties if properties is None else list(properties)
        unknown = [n for n in names if n not in self.probes]
        if unknown:
            raise ValueError(f"the blend predicts {self.properties}, not {unknown}")
        head_p, tree_p = self._parts(x, names)
        return {n: _mix(self.probes[n].kind, self.probes[n].hyperparameters["head_weight"],
                        np.asarray(head_p[n], dtype=object), np.asarray(tree_p[n], dtype=object)).tolist()
                for n in names}


def has_blend(folder_or_repo: str | os.PathLike, revision: str | None = None) -> bool:
    """Does the checkpoint folder or Hub repo hold a saved blend (probes/sane-finetuned+stats-gbt.json)?"""
    try:
        resolve_file(folder_or_repo, f"probes/{BLEND_FEATURES}.json", "", revision)
    except FileNotFoundError:
        return False
    return True


def _mix(kind: str, w: float, head: np.ndarray, trees: np.ndarray) -> np.ndarray:
    if kind == "regression":
        return w * head.astype(np.float64) + (1 - w) * trees.astype(np.float64)
    return head if w == 1 else trees
