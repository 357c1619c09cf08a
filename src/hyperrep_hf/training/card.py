"""The model card written next to a trained SANE checkpoint (OUT/README.md), built with
hyperrep_hf.cards from the run's options and its last evaluation."""

from __future__ import annotations

from pathlib import Path

from ..cards import probe_eval_results, sane_model_card, save_model_card


def _hub_ids(zoos: list[str]) -> list[str]:
    # A zoo given as a Hub id (org/name, not a local folder) is named in the card's metadata.
    return [z for z in zoos if z.count("/") == 1 and not Path(z).exists()]


def write_model_card(output_dir: Path, args, model, data, metrics: list[dict]) -> Path:
    """README.md: recipe, zoos, and the last evaluation's probe R^2 (test split if there is one,
    else validation) as model-index results."""
    evals = [m for m in metrics if m.get("type") == "eval"]
    last = evals[-1] if evals else {}
    split = "test" if any(k.startswith("probe_test_r2/") for k in last) else "validation"
    prefix = "probe_test_r2/" if split == "test" else "probe_val_r2/"
    r2 = {k[len(prefix):]: v for k, v in last.items() if k.startswith(prefix)}
    hub = _hub_ids(args.zoo)
    dataset = hub[0] if len(hub) == 1 and len(args.zoo) == 1 else "+".join(Path(z).name for z in args.zoo)
    architectures = ", ".join(sorted({g.zoo.architecture for g in data.groups}))
    tok = data.tokenizer
    left_out = f" ({data.num_exploded()} exploded checkpoints left out of it)" if data.num_exploded() else ""
    exploded = "exploded checkpoints left out of the train split" if args.drop_exploded else "every finite checkpoint kept"
    standardisation = (f"{tok.statistics} per-layer standardisation fitted on the train split, soft clip {tok.soft_clip}"
                       if args.standardize else "no standardisation")
    training = (
        f"\nTrained with `hyperrep train --recipe {args.recipe}` on {', '.join(f'`{z}`' for z in args.zoo)} "
        f"({architectures}; zoo epochs {args.zoo_epochs or 'all'}; {data.num_rows('train')} training rows{left_out}; "
        f"{exploded}; {standardisation}; layer-wise loss normalisation {args.layer_loss_norm}).\n"
        f"Views: {args.views} (aligned zoo {args.align}), multiplicative noise {args.multiplicative_noise}, additive noise "
        f"{args.additive_noise}, erasing p {args.erase_probability}, one shared random window. AdamW lr "
        f"{args.learning_rate} (weight decay {args.weight_decay} on matrices only), OneCycle (pct_start "
        f"{args.pct_start}, cosine), {args.epochs} epochs, batch {args.batch_size} models x 2 views, gradient "
        f"accumulation {args.gradient_accumulation_steps}, seed {args.seed}. All options: `training_args.json`; "
        f"curves: `metrics.jsonl`.\n"
    )
    if last:
        training += (f"\nLast evaluation (epoch {last['epoch']}): validation reconstruction loss "
                     f"{last['val_reconstruction_loss']:.4f}, R^2 {last['val_reconstruction_r2']:.4f} on standardised tokens.\n")
    card = sane_model_card(
        model,
        model_name=f"SANE ({args.preset}) on {dataset}",
        repo_id=output_dir.name,
        datasets=hub or None,
        eval_results=probe_eval_results(r2, dataset=dataset, split=split) if r2 else None,
        description=f"\nEmbeds {architectures} models; linear probes of {', '.join(r2) or 'properties'} are in the "
                    "evaluation below (ridge, fitted on train-split embeddings, penalty chosen on validation).\n",
        training=training,
    )
    return save_model_card(card, output_dir)
