"""`pipeline("weight-embedding", model=CHECKPOINT)`: one embedding per model, from its weights.

Inputs: an nn.Module, a state_dict, a .safetensors path, a zoo row (a dict with "weights") or a flat
weight vector [P]; a list of them (batched with batch_size > 1); or a zoo split (datasets.Dataset),
read in slices. Output per model: the mean of its token latents [latent_dim] (pooling="mean",
default), the mean of each layer's token latents [num_layers, latent_dim] (pooling="layer") or all
token latents [num_tokens, latent_dim] (pooling="full"). Models longer than the SANE window are
encoded in sliding windows with a halo (window_size, halo options). `permutations=k` averages the
"mean" or "layer" embedding over k function-preserving neuron permutations of each model
(downstream.embedding; the same k permutations for every model).

`allow_unseen=True` (an opt-in; the default refuses every architecture the checkpoint was not
trained on) embeds an nn.Module or state_dict of another architecture whose layer kinds the
tokenizer can encode, its tokens standardised by the model's own statistics
(downstream.transfer); `positions="clamp"` maps positions beyond the checkpoint's tables to their
last entries instead of refusing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Pipeline

from ..downstream.embedding import check_permutations, embed_flat, encode
from ..downstream.transfer import check_position_policy, clamp_positions, register_unseen
from ..modeling_sane import check_pooling, pool_latents


def _datasets_class(name: str) -> type | tuple:
    """datasets.<name>, or () (matches nothing) where the datasets library is not installed (remote code)."""
    try:
        import datasets
    except ImportError:
        return ()
    return getattr(datasets, name)


def match_layout(tokenizer, state_dict, num_layouts: int | None = None) -> tuple[torch.Tensor, int]:
    """A state_dict -> (flat weights [1, P], index of the tokenizer layout it has).

    Layouts match by structure (the sequence of tensor shapes and kinds, WeightLayout.match), so a
    model whose state_dict names differ from the zoo's (a CNN without Dropout modules, keys saved
    sorted) still embeds; names only break ties between layouts of the same structure. A model of
    another architecture is refused, naming the first tensor that differs.
    """
    layouts = [tl.weights for tl in tokenizer.layouts[:num_layouts]]
    names = {k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()}
    found, errors = [], []
    for i, layout in enumerate(layouts):
        try:
            found.append((set(layout.names) != names, i, layout.match(state_dict)))
        except ValueError as err:
            errors.append(str(err))
    if found:
        _, i, tensors = min(found, key=lambda f: f[:2])
        return layouts[i].flatten(tensors).unsqueeze(0), i
    size = sum(state_dict[k].numel() for k in names)
    raise ValueError(
        f"the checkpoint's tokenizer cannot encode this model ({len(names)} tensors / {size} weights): it is none of "
        f"the architectures the checkpoint was trained on; {'; '.join(errors) or 'the tokenizer knows no layout'}. "
        "Use a checkpoint trained on a zoo of this architecture"
    )


class WeightEmbeddingPipeline(Pipeline):
    """Embed models with a SANE checkpoint; the checkpoint's WeightTokenizer is the feature extractor."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None:
            raise ValueError(
                "this pipeline needs the checkpoint's WeightTokenizer (preprocessor_config.json); save it next to "
                "the model with tokenizer.save_pretrained(FOLDER) or pass feature_extractor=tokenizer"
            )
        # Layouts the checkpoint was trained with; models of any other family are refused.
        self._known_layouts = len(self.feature_extractor.layouts)

    # ---- Pipeline API --------------------------------------------------------------------------
    def _sanitize_parameters(self, pooling=None, window_size=None, halo=None, permutations=None, allow_unseen=None,
                             positions=None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown options {sorted(kwargs)}; weight-embedding takes pooling, window_size, halo, "
                             "permutations, allow_unseen, positions")
        pre, forward = {}, {}
        if allow_unseen is not None:
            pre["allow_unseen"] = bool(allow_unseen)
        if positions is not None:
            pre["positions"] = check_position_policy(positions)
        if pooling is not None:
            forward["pooling"] = check_pooling(pooling)
        if window_size is not None:
            forward["window_size"] = window_size
        if halo is not None:
            forward["halo"] = halo
        if permutations:
            pre["permutations"] = forward["permutations"] = check_permutations(permutations, pooling or "mean")
        return pre, forward, {}

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, _datasets_class("DatasetDict")):
            raise ValueError(f"got a DatasetDict with splits {list(inputs)}; pass one split, e.g. zoo.dataset['test']")
        if isinstance(inputs, _datasets_class("Dataset")):
            return self._embed_dataset(inputs, **kwargs)
        if torch.is_tensor(inputs) and inputs.dim() == 2:
            inputs = list(inputs)
        return super().__call__(inputs, **kwargs)

    def preprocess(self, item, permutations=0, allow_unseen=False, positions="refuse") -> dict:
        flat, layout_id = self._flatten(item, allow_unseen, positions)
        if permutations:  # permuted on the flat weights in _forward
            return {"weights": flat, "layout_id": torch.tensor([layout_id])}
        enc = self.feature_extractor.tokenize_flat(flat, layout_id=layout_id)
        pos = enc["positions"]
        if positions == "clamp":
            pos = clamp_positions(pos, self.model.config.max_positions)
        return {"tokens": enc["tokens"], "positions": pos, "attention_mask": enc["attention_mask"]}

    def _forward(self, model_inputs, pooling="mean", window_size=None, halo=None, permutations=0):
        if permutations:
            layouts = self.feature_extractor.layouts
            rows = [self._pooled(embed_flat(self.model, self.feature_extractor, w[None, : layouts[i].weights.num_weights],
                                            pooling, i, window_size=window_size, halo=halo, permutations=permutations),
                                 pooling)
                    for w, i in zip(model_inputs["weights"], model_inputs["layout_id"].tolist())]
            if pooling == "mean":
                return {"embedding": torch.cat([r["embedding"] for r in rows])}
            return {"layers": nn.utils.rnn.pad_sequence([r["layers"][0] for r in rows], batch_first=True),
                    "num_layers": torch.cat([r["num_layers"] for r in rows])}
        latents = encode(self.model, model_inputs, window_size, halo)
        mask, positions = model_inputs["attention_mask"], model_inputs["positions"]
        if pooling == "full":
            return {"latents": latents, "attention_mask": mask}
        out = self._pooled(pool_latents(latents, mask, pooling, positions), pooling)
        if pooling == "layer":  # rows of a smaller model in a mixed batch: only their own layers
            out["num_layers"] = positions[..., 1].to(mask.device).masked_fill(mask == 0, 0).amax(1).cpu() + 1
        return out

    def _pooled(self, embedding: torch.Tensor, pooling: str) -> dict:
        """Pooled embeddings [B, d] -> the forward output of "mean" ([B, latent_dim]) or "layer"
        pooling ([B, num_layers, latent_dim] and the rows' layer counts [B])."""
        if pooling == "mean":
            return {"embedding": embedding}
        layers = embedding.reshape(len(embedding), -1, self.model.config.latent_dim)
        return {"layers": layers, "num_layers": torch.full((len(layers),), layers.shape[1])}

    def postprocess(self, model_outputs, **kwargs):
        return self._unbatch(model_outputs)

    # ---- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _unbatch(model_outputs) -> torch.Tensor:
        """One model's forward output (batch of 1) -> [latent_dim], [its num_layers, latent_dim] or
        [its num_tokens, latent_dim]."""
        if "embedding" in model_outputs:
            return model_outputs["embedding"][0].cpu()
        if "layers" in model_outputs:
            return model_outputs["layers"][0, : int(model_outputs["num_layers"][0])].cpu()
        n = int(model_outputs["attention_mask"][0].sum())
        return model_outputs["latents"][0, :n].cpu()

    def layout_for_size(self, num_weights: int) -> int:
        """The tokenizer layout of flat weight vectors of length `num_weights`."""
        for i, tl in enumerate(self.feature_extractor.layouts[: self._known_layouts]):
            if tl.weights.num_weights == num_weights:
                return i
        known = [tl.weights.num_weights for tl in self.feature_extractor.layouts[: self._known_layouts]]
        raise ValueError(
            f"flat weights of length {num_weights} match no architecture this checkpoint's tokenizer knows "
            f"(weights per model: {known}); embed models of the zoo the checkpoint was trained on"
        )

    def _flatten(self, item, allow_unseen: bool = False, positions: str = "refuse") -> tuple[torch.Tensor, int]:
        """One model -> (flat weights [1, P], its tokenizer layout); see `match_layout`. With
        `allow_unseen`, a model or state_dict of another architecture gets a layout of its own."""
        tok = self.feature_extractor
        if isinstance(item, Mapping) and "weights" in item:  # a zoo row
            item = item["weights"]
        if torch.is_tensor(item) or isinstance(item, (np.ndarray, list)):
            flat = torch.as_tensor(np.asarray(item, dtype=np.float32)).reshape(1, -1)
            try:
                return flat, self.layout_for_size(flat.shape[1])
            except ValueError as err:
                if allow_unseen:
                    raise ValueError(f"{err}. A flat vector does not say which layers it holds: pass the model "
                                     "(nn.Module) or its state_dict to embed an unseen architecture") from err
                raise
        if isinstance(item, nn.Module):
            state_dict = item.state_dict()
        elif isinstance(item, (str, os.PathLike)):
            if not str(item).endswith(".safetensors") or not os.path.isfile(item):
                raise ValueError(f"{item} is not a .safetensors file; pass a model, a state_dict or a .safetensors path")
            state_dict = load_file(str(item))
        elif isinstance(item, Mapping):
            state_dict = item
        else:
            raise ValueError(f"cannot embed a {type(item).__name__}: pass an nn.Module, a state_dict, a .safetensors "
                             "path, a zoo row or a flat weight vector")
        try:
            return match_layout(tok, state_dict, self._known_layouts)
        except ValueError as err:
            if not allow_unseen:
                raise ValueError(f"{err}, or pass allow_unseen=True to embed it with per-model normalisation "
                                 "(downstream.transfer)") from err
        layout_id = register_unseen(tok, item if isinstance(item, nn.Module) else state_dict, self.model.config,
                                    positions=positions)
        layout = tok.layouts[layout_id].weights
        return layout.flatten(layout.match(state_dict)).unsqueeze(0), layout_id

    def _embed_dataset(self, ds, pooling=None, window_size=None, halo=None, batch_size=None, permutations=None, **kwargs):
        """A zoo split, read in slices of `batch_size` rows: list of one embedding per row. A row whose
        weights hold NaN / inf (a diverged checkpoint, as real zoos have) gets an all-NaN embedding, so
        the list stays aligned with the split's rows."""
        if "weights" not in ds.column_names:
            raise ValueError(f"the dataset has no 'weights' column (columns: {ds.column_names}); is it a zoo split?")
        pooling = check_pooling(pooling or "mean")
        permutations = check_permutations(permutations or 0, pooling)
        step = batch_size or self._batch_size or 64
        out = []
        for start in range(0, len(ds), step):
            flat = torch.as_tensor(np.asarray(ds.with_format("numpy")[start : start + step]["weights"], dtype=np.float32))
            flat = flat.reshape(flat.shape[0], -1)
            layout_id = self.layout_for_size(flat.shape[1])
            diverged = ~torch.isfinite(flat).all(1)
            flat[diverged] = 0.0  # embedded as zeros, then marked NaN below
            if permutations:
                res = self._pooled(embed_flat(self.model, self.feature_extractor, flat, pooling, layout_id, len(flat),
                                              window_size, halo, permutations=permutations), pooling)
            else:
                enc = self.feature_extractor.tokenize_flat(flat, layout_id=layout_id)
                with torch.no_grad():
                    res = self._forward(enc, pooling=pooling, window_size=window_size, halo=halo)
            rows = [self._unbatch({k: v[i : i + 1] for k, v in res.items()}) for i in range(flat.shape[0])]
            out.extend(torch.full_like(r, float("nan")) if bad else r for r, bad in zip(rows, diverged.tolist()))
        return out
