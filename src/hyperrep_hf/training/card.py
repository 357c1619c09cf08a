"""The model card written next to a trained SANE checkpoint (README.md in the output folder)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData


def _hub_ids(zoos: list[str]) -> list[str]:
    # A zoo given as a Hub id (org/name, not a local folder) is named in the card's metadata.
    return [z for z in zoos if z.count("/") == 1 and not Path(z).exists()]


def write_model_card(output_dir: Path, args, config, data, metrics: list[dict]) -> Path:
    """Write README.md: metadata (library, pipeline tag, zoos), the recipe and the last evaluation."""
    card_data = ModelCardData(library_name="transformers", pipeline_tag="feature-extraction", license="apache-2.0",
                              tags=["hyperrep_hf", "sane", "weight-space-learning", "hyper-representation"],
                              datasets=_hub_ids(args.zoo) or None)
    evals = [m for m in metrics if m.get("type") == "eval"]
    last = evals[-1] if evals else {}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in last.items() if isinstance(v, float) and k != "eval_seconds")
    zoos = ", ".join(f"`{z}`" for z in args.zoo)
    architectures = ", ".join(sorted({g.zoo.architecture for g in data.groups}))
    text = f"""---
{card_data.to_yaml()}
---

# SANE hyper-representation of {architectures} weights

A SANE model (Schürholt et al., ICML 2024) trained with `hyperrep_hf` on the zoo(s) {zoos}
(zoo epochs: {args.zoo_epochs or "all"}; {data.num_rows("train")} training rows). It maps a model's weights,
tokenized by the weight tokenizer saved beside it, to per-token latents; their mean is an embedding of
the whole model.

```python
import hyperrep_hf
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("{output_dir.name}")
tokenizer = AutoFeatureExtractor.from_pretrained("{output_dir.name}")
enc = tokenizer(my_model)                      # tokens, positions, attention_mask
embedding = model.embed(enc["tokens"], enc["positions"], enc["attention_mask"])
```

## Training

preset `{args.preset}` (d_model {config.d_model}, {config.num_layers} layers, {config.num_heads} heads, latent {config.latent_dim},
token size {config.token_size}, window {config.window_size}); gamma {args.gamma}, temperature {args.temperature},
layer-wise loss normalisation {args.layer_loss_norm}; views: permutation {args.permute_views}, multiplicative noise
{args.multiplicative_noise}, additive noise {args.additive_noise}, erasing p {args.erase_probability}; AdamW lr
{args.learning_rate} (weight decay {args.weight_decay} on matrices), OneCycle (pct_start {args.pct_start}, cosine),
{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}. All options: `training_args.json`; the curves:
`metrics.jsonl`.

## Evaluation (last epoch)

Reconstruction of validation models (standardised tokens) and linear ridge probes fitted on train-split
embeddings, penalty chosen on validation R^2.

| metric | value |
|---|---|
{rows}
"""
    path = output_dir / "README.md"
    tmp = output_dir / ".README.md.tmp"
    ModelCard(text).save(tmp)
    tmp.replace(path)
    return path
