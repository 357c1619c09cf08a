"""The dataset card (README.md) of a zoo, rendered from templates/zoo_card.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..files import atomic_write_text
from .dataset import CONFIG_NAME, data_files_config, zoo_features

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "zoo_card.md"
SPLITS = ("train", "validation", "test")
IMPORTED = ("smallcnnzoo", "modelzoos", "checkpoints", "hub-models")  # config["source"] of imported zoos


def shard_metadata(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """model_id, epoch, test_acc and diverged of every split, read from the shards without weights."""
    stats = {}
    for split in SPLITS:
        files = sorted((out / "data").glob(f"{split}-*.parquet"))
        cols = {"model_id": [], "epoch": [], "test_acc": [], "diverged": []}
        for f in files:
            t = pq.read_table(f, columns=list(cols))
            for c in cols:
                cols[c].append(t.column(c).to_numpy(zero_copy_only=False))
        stats[split] = {c: np.concatenate(v) if v else np.zeros(0) for c, v in cols.items()}
    return stats


def _spread(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return "-"
    return f"{values.min():.3f} / {np.median(values):.3f} / {values.max():.3f}"


def write_card(out: Path, info: dict, repo_hint: str | None = None) -> None:
    """Write DIR/README.md with the zoo's YAML (data files, tags) and a summary of its splits."""
    from datasets import DatasetInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    stats = shard_metadata(out)
    rows, models, diverged = [], 0, 0
    last_epoch = max((int(s["epoch"].max()) for s in stats.values() if len(s["epoch"])), default=0)
    for split, s in stats.items():
        n_models = len(np.unique(s["model_id"]))
        models += n_models
        diverged += len(np.unique(s["model_id"][s["diverged"].astype(bool)]))
        first, last = s["test_acc"][s["epoch"] == 0], s["test_acc"][s["epoch"] == last_epoch]
        rows.append(f"| {split} | {n_models} | {len(s['epoch'])} | {_spread(first)} | {_spread(last)} |")
    total_rows = sum(len(s["epoch"]) for s in stats.values())
    size = "n<1K" if total_rows < 1_000 else "1K<n<10K" if total_rows < 10_000 else "10K<n<100K" if total_rows < 100_000 else "100K<n<1M"
    config = info.get("config", {})
    extra = info.get("extra_columns") or {}
    extra_text = (" Extra columns: " + ", ".join(f"`{k}` ({t})" for k, t in extra.items()) + "." if extra else "")
    if "source" in extra:
        extra_text += " `source` names the original model each row comes from."
    if config.get("source") in IMPORTED:
        how_made = (f"Imported with `hyperrep zoo import --format {config['source']}` from `{config.get('path') or 'Hub model repos'}`; "
                    "the weights are stored in this library's layout (PyTorch state_dict order), the metrics and hyperparameters "
                    "as the source recorded them.")
    else:
        how_made = ("Generated with `hyperrep_hf` population training: all models of a group train at once on stacked "
                    "parameters, each with its own seed, initialisation, data order, learning rate, weight decay and "
                    f"optimizer. Training batch size {config.get('batch_size', 'unknown')}.")
    card_data = DatasetCardData(
        tags=["model-zoo", "weight-space-learning", "hyperrep_hf"],
        size_categories=[size],
        configs=data_files_config(),
    )
    # the columns, as datasets writes them for a pushed dataset: the Hub's viewer and load_dataset read them
    features = zoo_features(info["num_weights"], info.get("extra_columns"))
    DatasetInfosDict({"default": DatasetInfo(features=features)}).to_dataset_card_data(card_data)
    card = DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        zoo_name=info.get("name", out.name),
        num_models=models,
        architecture=info["architecture"] or "(no architecture: rows are state_dicts)",
        task=info.get("task") or "an unnamed task",
        checkpoint_epochs=info.get("checkpoint_epochs", "all"),
        description=config.get("description", ""),
        num_weights=info["num_weights"],
        varied=", ".join(info.get("varied", [])) or "none",
        last_epoch=last_epoch,
        split_table="\n".join(rows),
        num_diverged=diverged,
        repo_hint=repo_hint or "path/to/zoo",
        extra_columns=extra_text,
        how_made=how_made,
        config_json=json.dumps(config, indent=2, default=str),
    )
    atomic_write_text(out / "README.md", str(card))


def finalize_zoo(out: Path, info: dict) -> None:
    """Mark a zoo folder complete: card first, then the sidecar with complete=True."""
    info = dict(info, complete=True)
    write_card(out, info)
    atomic_write_text(out / CONFIG_NAME, json.dumps(info, indent=1))
