"""`pipeline("weight-property-prediction", model=CHECKPOINT)`: predict a model's properties from its weights.

A checkpoint with a fine-tuned property head (`hyperrep finetune`; its config names `properties`)
predicts with the head (SaneForPropertyPrediction), blended with the s(W) trees where the checkpoint
holds a saved blend (`hyperrep probe fit --features sane-finetuned+stats-gbt`, downstream.blend); any
other with the checkpoint's "sane" probe set (`hyperrep probe fit`, saved under CHECKPOINT/probes/),
or the probes passed as `probes=`. The
output per model is a dict keyed by the zoo's column names, e.g.
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
    """The fine-tuned head (and its saved blend with the s(W) trees), or SANE embedding + linear
    probes. `probes=` takes a ProbeSet (default: the checkpoint's), used instead of a head."""

    def __init__(self, *args, probes: ProbeSet | None = None, **kwargs):
        self._probes = probes
        self._head = self._blend = None
        super().__init__(*args, **kwargs)

    @property
    def head(self):
        """The checkpoint's SaneForPropertyPrediction (None: it has none, or `probes=` was given)."""
        if self._probes is not None or not getattr(self.model.config, "properties", None):
            return None
        if self._head is None:
            from ..modeling_sane import SaneForPropertyPrediction

            if isinstance(self.model, SaneForPropertyPrediction):
                self._head = self.model
            else:  # AutoModel loaded the backbone; the head is in the same files
                self._head = SaneForPropertyPrediction.from_pretrained(
                    self.model.name_or_path, revision=checkpoint_revision(self.model)).to(self.model.device, self.model.dtype)
            self._head.eval()
        return self._head

    @property
    def blend(self):
        """The head's saved blend with the s(W) trees (a BlendedProbeSet; None: no head, or none saved)."""
        if self.head is None:
            return None
        if self._blend is None:
            from ..downstream.blend import BlendedProbeSet, has_blend
            from ..downstream.head import FinetunedHead

            where, revision = self.model.name_or_path, checkpoint_revision(self.model)
            self._blend = (BlendedProbeSet.load(where, FinetunedHead(self.head, self.feature_extractor), revision)
                           if has_blend(where, revision) else False)
        return self._blend or None

    def _check_head_properties(self, properties) -> None:
        unknown = [n for n in properties if n not in self.head.property_names]
        if unknown:
            raise ValueError(f"the checkpoint's fine-tuned head predicts {self.head.property_names}, not {unknown}; "
                             "fine-tune a head for them (hyperrep finetune --properties ...)")

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
            if self.head is not None:
                self._check_head_properties(properties)
            else:
                for name in properties:  # fail before any model is embedded
                    self.probes._probe(name)
            post["properties"] = properties
        return pre, forward, post

    def preprocess(self, item, **kwargs) -> dict:
        if self.head is None:
            return super().preprocess(item, self.probes.info.get("permutations", 0))
        flat, layout_id = self._flatten(item)
        return self._head_inputs(flat, layout_id)

    def _head_inputs(self, flat: torch.Tensor, layout_id: int) -> dict:
        """Flat weights [B, P] -> the head's inputs: tokens, positions, attention_mask (and s(W))."""
        enc = self.feature_extractor.tokenize_flat(flat, layout_id=layout_id)
        inputs = {k: enc[k] for k in ("tokens", "positions", "attention_mask")}
        if self.head.config.head_statistics or self.blend is not None:  # s(W): the head's input, the trees'
            from ..weightspace.statistics import weight_statistics

            inputs["statistics"] = weight_statistics(flat, self.feature_extractor.layouts[layout_id].weights)[0]
        return inputs

    def _forward(self, model_inputs, window_size=None, halo=None, **kwargs):
        if self.head is not None:
            inputs = {k: torch.as_tensor(v).to(self.head.device) for k, v in model_inputs.items()}
            inputs["tokens"] = inputs["tokens"].to(self.head.dtype)
            statistics = inputs.pop("statistics", None)
            with torch.no_grad():
                logits = self.head(**inputs, statistics=statistics if self.head.config.head_statistics else None).logits
            return {"logits": logits.float().cpu(), **({} if statistics is None else {"statistics": statistics.cpu()})}
        return super()._forward(model_inputs, self.probes.info.get("pooling", "mean"), window_size, halo,
                                self.probes.info.get("permutations", 0))

    def postprocess(self, model_outputs, properties=None):
        if "logits" in model_outputs:
            outputs = {k: v[:1] for k, v in model_outputs.items()}
            return {name: values[0] for name, values in self._head_predictions(outputs, properties).items()}
        embedding = self._unbatch(model_outputs).reshape(1, -1)
        return {name: values[0] for name, values in self.probes.predict(embedding, properties).items()}

    def _embed_dataset(self, ds, properties=None, window_size=None, halo=None, batch_size=None, **kwargs):
        if self.head is not None:
            return self._predict_dataset(ds, properties, batch_size)
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

    def _head_predictions(self, outputs: dict, properties=None) -> dict[str, list]:
        """{property: predictions} from the head's outputs (logits [B, K], with a blend statistics [B, d])."""
        names = list(properties or self.head.property_names)
        blended = [n for n in names if self.blend is not None and n in self.blend.probes]
        out = self.blend.predict(torch.cat([outputs["logits"], outputs["statistics"].float()], 1), blended) if blended else {}
        if len(out) < len(names):
            out = {**self.head.predictions(outputs["logits"]), **out}
        return {n: out[n] for n in names}

    def _predict_dataset(self, ds, properties=None, batch_size=None) -> list[dict]:
        """A zoo split through the fine-tuned head, in slices; rows of diverged checkpoints get None."""
        import numpy as np

        if "weights" not in ds.column_names:
            raise ValueError(f"the dataset has no 'weights' column (columns: {ds.column_names}); is it a zoo split?")
        names = list(properties) if properties is not None else self.head.property_names
        self._check_head_properties(names)
        step, out = batch_size or self._batch_size or 64, []
        for start in range(0, len(ds), step):
            flat = torch.as_tensor(np.asarray(ds.with_format("numpy")[start : start + step]["weights"], dtype=np.float32))
            flat = flat.reshape(flat.shape[0], -1)
            diverged = ~torch.isfinite(flat).all(1)
            flat[diverged] = 0.0
            predicted = self._head_predictions(self._forward(self._head_inputs(flat, self.layout_for_size(flat.shape[1]))),
                                               names)
            out += [dict.fromkeys(names) if bad else {n: predicted[n][i] for n in names}
                    for i, bad in enumerate(diverged.tolist())]
        return out
