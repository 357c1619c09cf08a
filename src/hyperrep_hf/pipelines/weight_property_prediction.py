"""`pipeline("weight-property-prediction", model=CHECKPOINT)`: predict a model's properties from its weights.

The probes are the checkpoint's "sane" probe set (`hyperrep probe fit`, saved under
CHECKPOINT/probes/); the output per model is a dict keyed by the zoo's column names, e.g.
{"test_acc": 0.91, "epoch": 7.8, "ggap": 0.02, "activation": "tanh"}. Inputs as for
"weight-embedding"; on a zoo split, rows of diverged checkpoints (NaN / inf weights) get None for
every property.
"""

from __future__ import annotations

import torch

from ..downstream.generation import checkpoint_revision
from ..downstream.probes import ProbeSet
from .weight_embedding import WeightEmbeddingPipeline


class WeightPropertyPredictionPipeline(WeightEmbeddingPipeline):
    """SANE embedding + linear probes. `probes=` takes a ProbeSet (default: the checkpoint's)."""

    def __init__(self, *args, probes: ProbeSet | None = None, **kwargs):
        self._probes = probes
        super().__init__(*args, **kwargs)

    @property
    def probes(self) -> ProbeSet:
        if self._probes is None:
            self._probes = ProbeSet.load(self.model.name_or_path, "sane", checkpoint_revision(self.model))
        return self._probes

    def _sanitize_parameters(self, properties=None, window_size=None, halo=None, **kwargs):
        if "pooling" in kwargs or "permutations" in kwargs:
            raise ValueError("the probes fix the pooling and permutations they were fitted with; do not pass them")
        if kwargs:
            raise ValueError(f"unknown options {sorted(kwargs)}; weight-property-prediction takes properties, window_size, halo")
        pre, forward, _ = super()._sanitize_parameters(window_size=window_size, halo=halo)
        post = {}
        if properties is not None:
            properties = [properties] if isinstance(properties, str) else list(properties)
            for name in properties:  # fail before any model is embedded
                self.probes._probe(name)
            post["properties"] = properties
        return pre, forward, post

    def preprocess(self, item, **kwargs) -> dict:
        return super().preprocess(item, self.probes.info.get("permutations", 0))

    def _forward(self, model_inputs, window_size=None, halo=None, **kwargs):
        return super()._forward(model_inputs, self.probes.info.get("pooling", "mean"), window_size, halo,
                                self.probes.info.get("permutations", 0))

    def postprocess(self, model_outputs, properties=None):
        embedding = self._unbatch(model_outputs).reshape(1, -1)
        return {name: values[0] for name, values in self.probes.predict(embedding, properties).items()}

    def _embed_dataset(self, ds, properties=None, window_size=None, halo=None, batch_size=None, **kwargs):
        _, _, post = self._sanitize_parameters(properties=properties, window_size=window_size, halo=halo)
        embeddings = super()._embed_dataset(ds, self.probes.info.get("pooling", "mean"), window_size, halo, batch_size,
                                            self.probes.info.get("permutations", 0))
        if not embeddings:
            return []
        x = torch.stack([e.reshape(-1) for e in embeddings])
        finite = torch.isfinite(x).all(1)  # rows of diverged checkpoints: no prediction (None)
        names = post.get("properties") or self.probes.properties
        predictions = self.probes.predict(x[finite], names) if finite.any() else {n: [] for n in names}
        out, k = [], 0
        for ok in finite.tolist():
            out.append({n: predictions[n][k] for n in names} if ok else dict.fromkeys(names))
            k += ok
        return out
