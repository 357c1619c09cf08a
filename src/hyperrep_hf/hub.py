"""Share a SANE checkpoint folder on the Hub whole, in one commit; it loads back by repo id.

    push_checkpoint("runs/sane-digits", "org/sane-digits")      # = hyperrep push runs/sane-digits org/sane-digits

What travels: the model (config.json, model.safetensors) with the code that loads it, the three
pipelines and the weight tokenizer without hyperrep_hf (remote_code.write_remote_code), the
tokenizer with its statistics, permutation spec and alignment reference (preprocessor_config.json),
probes/, sampling/ (anchors), the model card (its model-index from the saved probes), the training
arguments and curves (training_args.json, metrics.jsonl) and, with `include_logs`, the TensorBoard
logs (runs/). Never the optimizer states of checkpoints/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .files import atomic_write_text
from .remote_code import write_remote_code

REQUIRED = {
    "config.json": "save the model with model.save_pretrained(FOLDER) (hyperrep train writes it)",
    "model.safetensors": "save the model with model.save_pretrained(FOLDER) (hyperrep train writes it)",
    "preprocessor_config.json": "save the weight tokenizer with tokenizer.save_pretrained(FOLDER)",
}
# Resume states (optimizer, RNG: large and of no use to others), temporary files, local caches.
IGNORED = ["checkpoints/*", "checkpoints/**", "**/.*", ".*", "**/*.tmp", "**/__pycache__/**"]
LOGS = ["runs/*", "runs/**"]


def probe_results(folder: Path) -> list:
    """Model-index entries from the saved SANE probes: validation R^2 (regressions) and accuracy
    (classifications) per property, as `probes/sane.json` records them."""
    from huggingface_hub import EvalResult

    from .cards import PROBE_TASK, probe_eval_results

    path = folder / "probes" / "sane.json"
    if not path.is_file():
        return []
    saved = json.loads(path.read_text(encoding="utf-8"))
    zoo = Path(str(saved.get("info", {}).get("zoo") or "zoo")).name
    scores = {prop: probe.get("validation", {}) for prop, probe in sorted(saved.get("probes", {}).items())}
    finite = lambda v: isinstance(v, (int, float)) and v == v  # noqa: E731
    results = probe_eval_results({p: s["r2"] for p, s in scores.items() if finite(s.get("r2"))}, dataset=zoo,
                                 split="validation")
    return results + [EvalResult(task_type="feature-extraction", task_name=PROBE_TASK, dataset_type=zoo, dataset_name=zoo,
                                 dataset_split="validation", metric_type="accuracy", metric_name=f"accuracy {p}",
                                 metric_value=float(s["accuracy"])) for p, s in scores.items() if finite(s.get("accuracy"))]


def update_model_card(folder: Path, repo_id: str) -> None:
    """README.md for the Hub: the usage snippet names `repo_id`, the model-index holds the saved
    probes' results (a card is made from the config when the folder has none)."""
    from huggingface_hub import ModelCard

    from .cards import check_model_card, results_table, sane_model_card
    from .configuration_sane import SaneConfig

    results = probe_results(folder)
    card_path = folder / "README.md"
    if card_path.is_file():
        card = ModelCard(card_path.read_text(encoding="utf-8"))
        card.text = card.text.replace(f'from_pretrained("{folder.name}"', f'from_pretrained("{repo_id}"')
    else:
        card = sane_model_card(SaneConfig.from_pretrained(folder), model_name=f"SANE {folder.name}", repo_id=repo_id)
    if results:
        card.data.eval_results = results
        card.data.model_name = card.data.model_name or f"SANE {folder.name}"
        card.data.metrics = sorted({r.metric_type for r in results})
        head, sep, tail = card.text.partition("## Evaluation\n")
        if sep:  # the body's table says what the model-index says
            rest = tail.partition("\n## ")
            card.text = head + sep + results_table(results) + "\n" + rest[1] + rest[2]
    check_model_card(card)
    atomic_write_text(card_path, str(card))


def push_checkpoint(folder: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                    commit_message: str | None = None, token: str | None = None, include_logs: bool = False):
    """Upload everything a checkpoint folder holds that others need to the model repo `repo_id`, in
    one commit (the repo is created if needed; `revision` names a branch, created from main if new).

    Returns the CommitInfo (`.commit_url`, `.oid`: the commit to pin with revision=). Hub errors
    (no such repo or branch, no write access) come as huggingface_hub's typed errors naming the repo.
    """
    from huggingface_hub import HfApi

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (train one with `hyperrep train`)")
    for name, fix in REQUIRED.items():
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} has no {name}: {fix}")
    write_remote_code(path)
    update_model_card(path, repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        folder_path=str(path),
        repo_id=repo_id,
        revision=revision,
        ignore_patterns=IGNORED + ([] if include_logs else LOGS),
        commit_message=commit_message or f"Upload SANE checkpoint {path.name} with hyperrep_hf",
    )


__all__ = ["push_checkpoint", "update_model_card"]
