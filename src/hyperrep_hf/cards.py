"""Model cards for SANE checkpoints: metadata the Hub indexes (library, task, tags, zoos, probe
results as model-index) plus a readable body from model_cards/sane_card.md.

    card = sane_model_card(model, model_name="SANE on MNIST CNN zoo", repo_id="org/sane-mnist",
                           datasets=["org/mnist-zoo"],
                           eval_results=probe_eval_results({"test_acc": 0.97}, dataset="org/mnist-zoo"))
    check_model_card(card)             # offline: what the Hub would refuse, raised as ValueError
    save_model_card(card, "checkpoint/")   # checkpoint/README.md, written atomically
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from .configuration_sane import SaneConfig
from .files import atomic_save

TEMPLATE = Path(__file__).resolve().parent / "templates" / "sane_card.md"
DEFAULT_TAGS = ("hyperrep_hf", "sane", "weight-space-learning", "hyper-representation")
PROBE_TASK = "Linear probe of model properties from SANE embeddings"


def probe_eval_results(
    r2_by_property: Mapping[str, float], *, dataset: str, dataset_name: str | None = None, split: str = "test",
    kendall_tau_by_property: Mapping[str, float] | None = None,
) -> list[EvalResult]:
    """Linear-probe test R^2 per model property (e.g. {"test_acc": 0.97, "epoch": 0.95}) on a zoo
    (its Hub id) -> model-index entries; with `kendall_tau_by_property` each property's Kendall tau
    (rank agreement, as the NFN / neural-graph papers report) beside its R^2."""
    taus = dict(kendall_tau_by_property or {})
    unknown = sorted(set(taus) - set(r2_by_property))
    if unknown:
        raise ValueError(f"Kendall tau given for {unknown} without an R^2; pass both for every property.")
    results = []
    for prop, value in r2_by_property.items():
        scores = [("r_squared", "R^2", value)]
        if prop in taus:
            scores.append(("kendall_tau", "Kendall tau", taus[prop]))
        for metric_type, label, metric_value in scores:
            if not isinstance(metric_value, (int, float)):
                raise ValueError(f"{label} of {prop!r} must be a number, got {metric_value!r}.")
            results.append(
                EvalResult(
                    task_type="feature-extraction",
                    task_name=PROBE_TASK,
                    dataset_type=dataset,
                    dataset_name=dataset_name or dataset,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=f"{label} {prop}",
                    metric_value=float(metric_value),
                )
            )
    return results


def results_table(results: Sequence[EvalResult], left_out: Mapping[str, Mapping[str, int]] | None = None) -> str:
    """The card's evaluation section: a markdown table of the results, and below it what the scores
    left out per split (`left_out`: {split: {reason or property: rows}}, as in ProbeSet.info["left_out"]:
    diverged checkpoints, rows without the property)."""
    if not results:
        return "No evaluation recorded."
    rows = [f"| {r.dataset_name} | {r.dataset_split} | {r.metric_name} | {r.metric_value:.4f} |" for r in results]
    table = "| zoo | split | metric | value |\n|---|---|---|---|\n" + "\n".join(rows)
    notes = []
    for split, counts in (left_out or {}).items():
        if counts:
            from .downstream.evaluation import describe_left_out  # here: it imports the zoo package

            notes.append(describe_left_out(dict(counts), split).capitalize() + ".")
    return table + ("\n\n" + " ".join(notes) if notes else "")


def sane_model_card(
    model_or_config,
    *,
    model_name: str,
    repo_id: str | None = None,
    datasets: Sequence[str] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    tags: Sequence[str] | None = None,
    license: str = "apache-2.0",
    description: str = "",
    training: str = "",
    left_out: Mapping[str, Mapping[str, int]] | None = None,
) -> ModelCard:
    """A ModelCard for a SaneModel (or its SaneConfig), rendered from model_cards/sane_card.md.

    Args:
        model_or_config: the SaneModel (its parameter count goes into the card) or a SaneConfig.
        model_name: the card's title and the model-index name.
        repo_id: where the checkpoint lives, used in the usage snippet.
        datasets: Hub ids of the zoos it was trained on.
        eval_results: model-index entries, e.g. from `probe_eval_results`.
        tags: extra tags (the library's defaults are always added).
        description, training: free Markdown paragraphs for the body.
        left_out: rows the evaluation left out per split ({split: {reason or property: rows}}, e.g.
            ProbeSet.info["left_out"]), noted below the results.
    """
    config = model_or_config if isinstance(model_or_config, SaneConfig) else getattr(model_or_config, "config", None)
    if not isinstance(config, SaneConfig):
        raise ValueError(f"sane_model_card needs a SaneModel or SaneConfig, got {type(model_or_config).__name__}.")
    if not model_name.strip():
        raise ValueError("model_name must be a non-empty title.")
    eval_results = list(eval_results or [])
    parameters = sum(p.numel() for p in model_or_config.parameters()) if hasattr(model_or_config, "parameters") else None
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license=license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(tags or [])])),
        datasets=list(datasets) if datasets else None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id or "path/to/checkpoint",
        description=description,
        training=training or "Not recorded.",
        results_table=results_table(eval_results, left_out),
        token_size=config.token_size,
        d_model=config.d_model,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        latent_dim=config.latent_dim,
        window_size=config.window_size,
        max_positions=tuple(config.max_positions),
        num_parameters=f"{parameters:,}" if parameters is not None else "n/a",
        gamma=config.gamma,
        reconstruction_weight=round(1 - config.gamma, 6),
        temperature=config.contrastive_temperature,
        lwln=", layer-wise loss normalisation" if config.layer_loss_norm else "",
    )


def check_model_card(card: ModelCard) -> None:
    """Offline check of what the Hub validates on upload (ModelCard.validate needs the network):
    the YAML front matter parses back to the same metadata, pipeline_tag is a Hub task, and the
    model-index parses into complete evaluation results. Raises ValueError naming the problem."""
    reparsed = ModelCard(str(card))
    data = reparsed.data.to_dict()
    if data != card.data.to_dict():
        raise ValueError("The card's YAML metadata does not parse back to the same values; check the template's front matter.")
    from transformers.pipelines import SUPPORTED_TASKS

    # transformers' own tasks are Hub tasks; tasks registered by libraries (ours too) are not.
    # ("impl" is a dotted path for built-in tasks, a class for registered ones.)
    hub_tasks = {task for task, spec in SUPPORTED_TASKS.items() if str(spec["impl"]).startswith("transformers.")}
    problems = []
    if data.get("pipeline_tag") not in hub_tasks:
        problems.append(f"pipeline_tag {data.get('pipeline_tag')!r} is not a Hub task (use 'feature-extraction')")
    if not data.get("library_name"):
        problems.append("library_name is missing")
    for key in ("tags", "datasets", "metrics"):
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{key} must be a list of strings, got {value!r}")
    if "model-index" in data:
        try:
            _, results = model_index_to_eval_results(data["model-index"])
        except (KeyError, TypeError, IndexError) as err:
            problems.append(f"model-index does not parse: {err!r}")
        else:
            for r in results:
                if not isinstance(r.metric_value, (int, float)) or not r.dataset_type or not r.task_type:
                    problems.append(f"incomplete evaluation result {r}")
    if problems:
        raise ValueError("Model card metadata rejected: " + "; ".join(problems) + ".")


def zoo_card_name(zoo: str | os.PathLike) -> str:
    """A zoo as a card names it: a Hub id (org/name, not a local folder) as given, a folder by its name."""
    zoo = str(zoo)
    return zoo if zoo.count("/") == 1 and not Path(zoo).exists() else Path(zoo).name


FINETUNED_TASK = "Fine-tuned SANE property prediction"  # a fine-tuned head's model-index entries (and its blend's)
BLEND_SECTION = "## Blend with s(W)+GBT"
BLEND_SUFFIX = " (blend)"  # the blend's model-index entries: "R^2 test_acc (blend)", ...


def add_blend_results(folder: str | os.PathLike, blend, dataset: str) -> Path | None:
    """The fine-tuned head's card (folder/README.md) gains its saved blend (downstream.blend): the
    blend's validation scores in the model-index (metric names ending in BLEND_SUFFIX; the Hub groups
    entries by task and zoo, so they share the head's task) and a section saying what the pipeline
    now predicts with. A refitted blend replaces the earlier entries. None: no card."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return None
    card = ModelCard(path.read_text(encoding="utf-8"))
    labels = {"r2": ("r_squared", "R^2"), "accuracy": ("accuracy", "accuracy")}
    new = [EvalResult(task_type="feature-extraction", task_name=FINETUNED_TASK,
                      dataset_type=dataset, dataset_name=dataset, dataset_split="validation", metric_type=labels[m][0],
                      metric_name=f"{labels[m][1]} {name}{BLEND_SUFFIX}", metric_value=float(v))
           for name, probe in blend.probes.items() for m, v in probe.validation.items() if m in labels and v == v]
    kept = [r for r in (card.data.eval_results or []) if not r.metric_name.endswith(BLEND_SUFFIX)]
    card.data.eval_results = kept + new
    card.data.metrics = sorted({*(card.data.metrics or []), *(r.metric_type for r in new)})
    weights = ", ".join(f"{n} {p.hyperparameters['head_weight']:g}" for n, p in blend.probes.items())
    section = (f"{BLEND_SECTION}\nThis folder also holds the head blended with gradient-boosted trees on the s(W) "
               "statistics (`probes/sane-finetuned+stats-gbt.json`, trees as arrays), and the "
               "weight-property-prediction pipeline predicts with the blend: w * head + (1 - w) * trees, the "
               f"head's weight w chosen per property on validation ({weights}).\n\n{results_table(new)}\n")
    head, sep, tail = card.text.partition(BLEND_SECTION)
    rest = tail.partition("\n## ")[1:] if sep else ("", "")
    card.text = head.rstrip("\n") + "\n\n" + section + "".join(rest)
    check_model_card(card)
    return save_model_card(card, folder)


def save_model_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write the card as folder/README.md atomically (temp file, then rename)."""
    return atomic_save(Path(folder) / "README.md", card.save)


__all__ = ["add_blend_results", "check_model_card", "probe_eval_results", "sane_model_card", "save_model_card",
           "zoo_card_name"]
