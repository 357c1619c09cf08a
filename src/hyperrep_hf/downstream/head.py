"""A fine-tuned SANE property head (`hyperrep finetune`) in the place of a probe set: "sane-finetuned".

Its "features" are the head's outputs [rows, num_outputs] (`FinetunedHead.outputs`), which it decodes
into predictions itself (`predict`), so probe tables, the blend with the s(W) trees (downstream.blend)
and the property pipeline treat it as they treat fitted probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

FINETUNED_FEATURES = "sane-finetuned"


@dataclass
class HeadProperty:
    """One property of a fine-tuned head, as a probe-table row reads it (kind, validation score)."""

    kind: str
    validation: dict
    penalty: float | None = None


class FinetunedHead:
    """A fine-tuned SaneForPropertyPrediction in the place of a probe set ("sane-finetuned"): features
    are the head's outputs [rows, num_outputs] (`outputs`), `predict` turns them into properties."""

    features = FINETUNED_FEATURES

    def __init__(self, model, tokenizer, checkpoint=None):
        self.model, self.tokenizer = model, tokenizer
        self.probes = {p["name"]: HeadProperty(p["kind"], {}) for p in model.config.properties}
        self.info = {"pooling": None, "permutations": 0, "checkpoint": None if checkpoint is None else str(checkpoint)}

    @classmethod
    def load(cls, folder_or_repo, device: str | torch.device = "cpu", revision: str | None = None) -> FinetunedHead:
        from ..modeling_sane import SaneForPropertyPrediction, SaneModel
        from ..tokenization_weights import WeightTokenizer

        config = SaneModel.config_class.from_pretrained(str(folder_or_repo), revision=revision)
        if not config.properties:
            raise ValueError(f"{folder_or_repo} has no property head (its config names no properties): fine-tune one "
                             f"with `hyperrep finetune --checkpoint {folder_or_repo} --zoo ZOO --output_dir OUT` and "
                             "score OUT as sane-finetuned")
        model = SaneForPropertyPrediction.from_pretrained(str(folder_or_repo), revision=revision).eval().to(device)
        return cls(model, WeightTokenizer.from_pretrained(str(folder_or_repo), revision=revision), folder_or_repo)

    @property
    def properties(self) -> list[str]:
        return list(self.probes)

    @torch.no_grad()
    def outputs(self, weights: torch.Tensor, layout_id: int, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Flat weights [M, P] of one tokenizer layout -> head outputs [M, num_outputs] (on the CPU)."""
        from transformers.utils.logging import tqdm

        from ..weightspace.statistics import weight_statistics

        model, parts = self.model, []
        for start in tqdm(range(0, len(weights), batch_size), desc="head", disable=not progress, unit="batch"):
            chunk = weights[start:start + batch_size]
            enc = self.tokenizer.tokenize_flat(chunk, layout_id=layout_id)
            inputs = [torch.as_tensor(enc[k]).to(model.device) for k in ("tokens", "positions", "attention_mask")]
            stats = (weight_statistics(chunk, self.tokenizer.layouts[layout_id].weights)[0]
                     if model.config.head_statistics else None)
            parts.append(model(inputs[0].to(model.dtype), inputs[1], inputs[2], statistics=stats).logits.float().cpu())
        return torch.cat(parts) if parts else torch.zeros(0, sum(model.output_sizes))

    def predict(self, x: torch.Tensor, properties: Sequence[str] | None = None) -> dict[str, list]:
        names = self.properties if properties is None else list(properties)
        unknown = [n for n in names if n not in self.probes]
        if unknown:
            raise ValueError(f"the fine-tuned head predicts {self.properties}, not {unknown}; fine-tune a head with "
                             f"--properties {' '.join(self.properties + unknown)}")
        predicted = self.model.predictions(torch.as_tensor(x))
        return {n: predicted[n] for n in names}
