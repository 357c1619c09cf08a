"""Fine-tuning a SANE property head (SaneForPropertyPrediction) on a model zoo, with Accelerate.

    from hyperrep_hf.training.finetune import SaneFinetuningArguments, finetune_sane
    result = finetune_sane(SaneFinetuningArguments(checkpoint="runs/sane", zoo="zoos/mnist-seed",
                                                   output_dir="runs/head", properties=["test_acc", "epoch"]))

The pretrained encoder and a new head over its pooled latents learn the zoo's properties from the
train split (each model under a fresh random neuron permutation every step, which leaves its
function and properties unchanged); the validation split picks the epoch (early stopping on the
validation loss); the test split is scored once, with the chosen model, for the card. The weights
are tokenized with the checkpoint's own tokenizer (its standardisation, fitted on the pretraining
train split). OUT (output_dir) receives:

    config.json, model.safetensors     the SaneForPropertyPrediction of the best validation epoch
    *.py, preprocessor_config.json     remote code and the checkpoint's weight tokenizer
    finetuning_args.json               every option of the run
    metrics.jsonl, runs/               log lines ("train", "eval") and TensorBoard logs
    checkpoints/step-NNNNNNN/          accelerator.save_state + trainer_state.json, the last few
    best-model/                        the weights of the best validation epoch so far
    eval_results.json, README.md       validation and test scores of the result; the model card
    training_complete.json             written last: every file above is final

Checkpoints, exact resume and the refusals of a resume with other options are those of the SANE
pretraining loop (`SaneTrainer`, whose helpers this loop reuses).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..modeling_sane import SaneForPropertyPrediction
from ..remote_code import write_remote_code
from .arguments import parse_epochs
from .finetune_arguments import SaneFinetuningArguments, parse_finetuning_args, read_finetuning_args
from .trainer import (
    COMPLETE_NAME,
    Prefetcher,
    SaneTrainer,
    TrainResult,
    batch_seed,
    epoch_batches,
)

ARGS_NAME = "finetuning_args.json"
RESULTS_NAME = "eval_results.json"
BEST_DIR = "best-model"
SPLITS = ("train", "validation", "test")


def finetune_sane(args: SaneFinetuningArguments) -> TrainResult:
    """Fine-tune as `args` says; see the module docstring for what lands in args.output_dir."""
    return SaneFinetuner(args).train()


# ------------------------------------------------------------------------------------------- data
def property_specs(zoo, properties, train_targets: dict) -> list[dict]:
    """The head's properties from the train split's targets: a string / bool column is a
    classification over its train labels, a numeric one a regression standardised by the train mean
    and std. A property the zoo lacks is a ValueError naming it and the zoo's columns."""
    from ..downstream.probes import _is_categorical, missing_targets

    columns = set(zoo.dataset["train"].column_names) - {"weights"}
    absent = [p for p in properties if p not in columns]
    if absent:
        raise ValueError(f"zoo {zoo.path} has no property {absent[0]!r} to fine-tune on (missing: {absent}); "
                         f"its columns: {sorted(columns)}")
    specs = []
    for name in properties:
        values = [v for v, m in zip(train_targets[name], missing_targets(train_targets[name])) if not m]
        if len(values) < 2:
            raise ValueError(f"property {name!r} has {len(values)} known values in the train split of {zoo.path}; "
                             "fine-tuning needs at least 2")
        if _is_categorical(values):
            labels = sorted({v.item() if isinstance(v, np.generic) else v for v in values}, key=str)
            if len(labels) < 2:
                raise ValueError(f"property {name!r} has a single label {labels} in the train split: nothing to learn")
            specs.append({"name": name, "kind": "classification", "labels": labels})
        else:
            y = np.asarray(values, dtype=np.float64)
            specs.append({"name": name, "kind": "regression", "mean": float(y.mean()), "std": float(max(y.std(), 1e-8))})
    return specs


@dataclass
class PropertyData:
    """The usable rows of a zoo (finite weights, at `epochs`) per split: flat weights [M, P] and
    their targets {property: M values}, with the checkpoint tokenizer's layout of the zoo."""

    zoo: object
    tokenizer: object
    layout_id: int
    weights: dict
    targets: dict
    model_ids: dict
    left_out: dict
    with_statistics: bool = False

    @classmethod
    def load(cls, zoo, tokenizer, properties, epochs=None, checkpoint: str = "the checkpoint") -> PropertyData:
        from ..downstream.evaluation import usable_rows, zoo_targets
        from ..downstream.generation import find_layout
        from ..zoo import load_zoo

        zoo = load_zoo(zoo) if isinstance(zoo, (str, Path)) else zoo
        try:
            layout_id = find_layout(tokenizer, zoo.layout, f"the zoo {zoo.path} ({zoo.architecture})")
        except ValueError as err:
            raise ValueError(f"cannot fine-tune {checkpoint} on zoo {zoo.path}: {err}") from None
        weights, targets, model_ids, left_out = {}, {}, {}, {}
        for split in SPLITS:
            if split not in zoo.dataset:
                raise ValueError(f"zoo {zoo.path} has no {split!r} split (splits: {list(zoo.dataset)}); fine-tuning "
                                 "trains on train, chooses the epoch on validation and reports test")
            rows, left_out[split] = usable_rows(zoo, split, epochs)
            weights[split] = zoo.weights(split)[torch.as_tensor(rows)].float().contiguous()
            columns = set(zoo.dataset[split].column_names)
            absent = [p for p in properties if p not in columns]
            if absent:
                raise ValueError(f"zoo {zoo.path} has no property {absent[0]!r} to fine-tune on in its {split} split "
                                 f"(missing: {absent}); its columns: {sorted(columns - {'weights'})}")
            targets[split] = zoo_targets(zoo, split, properties, rows)
            model_ids[split] = zoo.metadata(split, ["model_id"])["model_id"].to_numpy()[rows]
        return cls(zoo, tokenizer, layout_id, weights, targets, model_ids, left_out)

    @property
    def permutation_spec(self):
        """The architecture's PermutationSpec (None: no augmentation possible, or the tokenizer aligns
        every model to a reference, which undoes any permutation)."""
        layout = self.tokenizer.layouts[self.layout_id]
        if layout.alignment is not None or layout.permutation is None:
            return None
        if not hasattr(self, "_spec"):
            self._spec = self.tokenizer.permutation_spec(self.layout_id)
        return self._spec

    def num_rows(self, split: str) -> int:
        return len(self.weights[split])

    @property
    def num_statistics(self) -> int:
        """s(W) features per model (7 per tensor of the layout)."""
        return 7 * len(self.tokenizer.layouts[self.layout_id].weights)

    def statistics(self, split: str) -> torch.Tensor:
        """s(W) of the raw weights [rows, num_statistics] of a split, computed once (a neuron
        permutation leaves every tensor's statistics as they are)."""
        from ..weightspace.statistics import weight_statistics

        cache = self.__dict__.setdefault("_statistics", {})
        if split not in cache:
            cache[split] = weight_statistics(self.weights[split], self.tokenizer.layouts[self.layout_id].weights)[0]
        return cache[split]

    def batch(self, split: str, rows: torch.Tensor, labels, generator: torch.Generator | None = None) -> dict:
        """Model inputs of rows [B] of a split, each under its own random neuron permutation when a
        generator is given: tokens [B, N, T], positions, attention_mask, labels [B, P], label_mask."""
        from ..weightspace.permutation import permute_flat

        flat = self.weights[split][rows]
        spec = self.permutation_spec
        if generator is not None and spec is not None:
            flat = permute_flat(flat, self.tokenizer.layouts[self.layout_id].weights, spec,
                                spec.random(len(flat), generator))
        enc = self.tokenizer.tokenize_flat(flat, layout_id=self.layout_id)
        batch = {"tokens": enc["tokens"], "positions": enc["positions"], "attention_mask": enc["attention_mask"],
                 "labels": labels[0][rows], "label_mask": labels[1][rows]}
        if self.with_statistics:
            batch["statistics"] = self.statistics(split)[rows]
        return batch


# ------------------------------------------------------------------------------------------- loop
class SaneFinetuner(SaneTrainer):
    """One fine-tuning run; `train()` does everything. Reuses SaneTrainer's accelerator set-up,
    output-folder checks, checkpoints and metrics file."""

    args_name = ARGS_NAME

    def __init__(self, args: SaneFinetuningArguments):
        super().__init__(args)

    def _check_resume_compatible(self, data=None) -> None:
        saved = self.output_dir / ARGS_NAME
        if saved.is_file():
            diff = read_finetuning_args(saved).differences(self.args)
            if diff:
                listing = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(f"cannot resume {self.output_dir}: the options differ from the run's ({listing}); "
                                 "resume with the run's options or start a new --output_dir")

    def _check_output_dir(self):
        taken = (self.output_dir / ARGS_NAME).is_file()
        if not self.args.resume and taken and not self.args.overwrite_output_dir:
            raise ValueError(f"{self.output_dir} already holds a fine-tuning run; pass --resume to continue it, "
                             "--overwrite_output_dir true to start over, or choose another --output_dir")
        return super()._check_output_dir()

    def _clear_previous_run(self) -> None:
        import shutil

        super()._clear_previous_run()
        shutil.rmtree(self.output_dir / BEST_DIR, ignore_errors=True)
        (self.output_dir / RESULTS_NAME).unlink(missing_ok=True)

    def _build_model(self, data: PropertyData) -> SaneForPropertyPrediction:
        args = self.args
        specs = property_specs(data.zoo, args.properties, data.targets["train"])
        layers = data.tokenizer.layouts[data.layout_id].num_layers
        data.with_statistics = args.statistics_features
        return SaneForPropertyPrediction.from_pretrained(
            args.checkpoint, revision=args.revision, properties=specs, head_pooling=args.pooling,
            head_layers=layers if args.pooling == "layer" else None, head_hidden_dim=args.head_hidden_dim,
            head_dropout=args.head_dropout, freeze_encoder=args.freeze_encoder,
            head_statistics=data.num_statistics if args.statistics_features else 0)

    def _optimizer(self, model: SaneForPropertyPrediction) -> torch.optim.Optimizer:
        args, groups = self.args, []
        for part, lr in ((model.head, args.learning_rate), (model.sane.encoder, args.encoder_learning_rate)):
            params = [p for p in part.parameters() if p.requires_grad]
            groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay, "lr": lr},
                       {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
        return torch.optim.AdamW([g for g in groups if g["params"]])

    def train(self) -> TrainResult:
        from ..tokenization_weights import WeightTokenizer

        args = self.args
        checkpoint = self._start_run()
        acc = self.accelerator
        main = acc.is_main_process
        if checkpoint is not None:
            self._check_resume_compatible()
        tokenizer = WeightTokenizer.from_pretrained(args.checkpoint, revision=args.revision)
        with acc.main_process_first():
            data = self.data = PropertyData.load(args.zoo, tokenizer, args.properties, parse_epochs(args.zoo_epochs),
                                                 args.checkpoint)
        model = self._build_model(data)
        self.labels = {s: model.encode_labels(data.targets[s], data.num_rows(s)) for s in SPLITS}
        if checkpoint is None:  # a resumed run loads them with the model
            model.head.set_feature_standardization(self.embed_split(model, "train", acc))
        optimizer = self._optimizer(model)

        num_train = data.num_rows("train")
        if num_train < 2:
            raise ValueError(f"zoo {args.zoo} has {num_train} usable train rows; fine-tuning needs at least 2")
        world, rank = acc.num_processes, acc.process_index
        micro_per_rank, steps_per_epoch, total_steps = self._schedule(num_train, checkpoint)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                        total_steps=total_steps, pct_start=args.pct_start,
                                                        anneal_strategy="cos")
        model, optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(scheduler)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

        global_step, start_epoch, start_micro = self._restore(checkpoint)
        result = TrainResult(self.output_dir, global_step, start_epoch, False, checkpoint)
        self.last_checkpoint, self.prefetcher = checkpoint, None
        evals = [m for m in self._read_metrics() if m.get("type") == "eval"] if checkpoint is not None else []
        if main:
            inner = acc.unwrap_model(model)
            trained = sum(p.numel() for p in inner.parameters() if p.requires_grad)
            aug = "permutation augmentation" if args.permutation_augmentation and data.permutation_spec else "no augmentation"
            print(f"fine-tuning {args.checkpoint} on {args.zoo}: {', '.join(inner.property_names)}; {trained:,} trained "
                  f"parameters ({'head only' if args.freeze_encoder else 'encoder + head'}, {args.pooling} pooling), "
                  f"{aug}; {num_train} training rows, {steps_per_epoch} steps/epoch x {args.epochs} epochs on {world} "
                  f"process(es), {acc.device}, precision {acc.mixed_precision}")
        bar = tqdm(total=total_steps, initial=global_step, desc="fine-tune", unit="step", dynamic_ncols=True,
                   disable=not (main and args.progress))
        window = {"loss": 0.0, "step_time": 0.0, "data_time": 0.0, "samples": 0, "steps": 0}
        try:
            for epoch in range(start_epoch, args.epochs):
                if self._should_stop(evals):
                    break
                batches = epoch_batches(num_train, args.batch_size, args.seed, epoch)
                mine = [(i * world + rank) % len(batches) for i in range(micro_per_rank)]
                micro = start_micro if epoch == start_epoch else 0
                self.prefetcher = Prefetcher(lambda b, batches=batches, epoch=epoch: self.make_batch(batches[b], epoch, b),
                                             mine[micro:], 2)
                model.train()
                while micro < micro_per_rank:
                    group = mine[micro:micro + args.gradient_accumulation_steps]
                    stats = self._finetune_step(group, batches, global_step)
                    global_step += 1
                    micro += len(group)
                    for k in window:
                        window[k] += stats[k] if k != "steps" else 1
                    bar.update(1)
                    if global_step % args.logging_steps == 0 or micro >= micro_per_rank:
                        n = max(1, window["steps"])
                        line = {"type": "train", "step": global_step, "epoch": round(epoch + micro / micro_per_rank, 4),
                                "loss": window["loss"] / n, "learning_rate": stats["learning_rate"],
                                "seconds_per_step": window["step_time"] / n,
                                "data_share": window["data_time"] / max(window["step_time"], 1e-12),
                                "samples_per_s": window["samples"] / max(window["step_time"], 1e-12)}
                        result.train_history.append(line)
                        if main:
                            self._write_metrics(line)
                        acc.log({f"train/{k}": v for k, v in line.items() if k not in ("type", "step")}, step=global_step)
                        bar.set_postfix(loss=f"{line['loss']:.4f}")
                        window = dict.fromkeys(window, 0.0)
                    if args.stop_after_steps is not None and args.stop_after_steps <= global_step < total_steps:
                        self._save_checkpoint(global_step, epoch, micro)
                        result.global_step, result.epoch, result.last_checkpoint = global_step, epoch, self.last_checkpoint
                        return result
                self.prefetcher.close()
                line = self.evaluate(global_step, epoch + 1)
                evals.append(line)
                result.eval_history.append(line)
                self._save_checkpoint(global_step, epoch + 1, 0)
            self._save_final(global_step, evals)
            result.global_step, result.epoch, result.finished = global_step, args.epochs, True
            result.last_checkpoint = self.last_checkpoint
            return result
        finally:
            bar.close()
            if self.prefetcher is not None:
                self.prefetcher.close()
            acc.end_training()

    def _should_stop(self, evals: list[dict]) -> bool:
        """Early stopping: `early_stopping_patience` evaluations since the lowest validation loss."""
        patience = self.args.early_stopping_patience
        if not patience or not evals:
            return False
        best = int(np.argmin([e["val_loss"] for e in evals]))
        return len(evals) - 1 - best >= patience

    def make_batch(self, rows: torch.Tensor, epoch: int, index: int) -> dict:
        """Batch `index` of `epoch` from its own seeded generator (the permutations)."""
        generator = torch.Generator().manual_seed(batch_seed(self.args.seed, epoch, index + 1))
        return self.data.batch("train", rows, self.labels["train"],
                               generator if self.args.permutation_augmentation else None)

    def _finetune_step(self, group: list[int], batches, global_step: int) -> dict:
        acc, model, args = self.accelerator, self.model, self.args
        t0, data_time, total, samples = time.perf_counter(), 0.0, 0.0, 0
        for j, b in enumerate(group):
            batch, waited = self.prefetcher.next()
            data_time += waited
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            sync = acc.no_sync(model) if j < len(group) - 1 and acc.num_processes > 1 else _null()
            with sync:
                out = model(**batch)
                acc.backward(out.loss / len(group))
            total += float(out.loss.detach())
            samples += len(batches[b])
        mean = float(acc.reduce(torch.tensor(total / len(group), device=acc.device), reduction="mean"))
        if not math.isfinite(mean):
            self._diverged(global_step + 1, mean)
        if args.max_grad_norm is not None:
            acc.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": mean, "learning_rate": learning_rate, "step_time": time.perf_counter() - t0,
                "data_time": data_time, "samples": samples * acc.num_processes}

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def embed_split(self, model: SaneForPropertyPrediction, split: str, acc) -> torch.Tensor:
        """The pooled latents [rows, d] the head reads, of every usable row of `split` (as stored)."""
        model.eval().to(acc.device)
        out = []
        for rows in torch.arange(self.data.num_rows(split)).split(self.args.eval_batch_size):
            batch = self.data.batch(split, rows, self.labels[split])
            inputs = [batch[k].to(acc.device) if k in batch else None for k in ("tokens", "positions", "attention_mask",
                                                                                  "statistics")]
            with acc.autocast():
                out.append(model.features(*inputs).float().cpu())
        model.train()
        return torch.cat(out)

    @torch.no_grad()
    def predict_split(self, model: SaneForPropertyPrediction, split: str) -> tuple[float, dict[str, list]]:
        """(mean loss, {property: predictions}) of `model` on every usable row of `split`."""
        acc, data = self.accelerator, self.data
        model.eval()
        losses, logits = [], []
        for rows in torch.arange(data.num_rows(split)).split(self.args.eval_batch_size):
            batch = {k: v.to(acc.device) for k, v in data.batch(split, rows, self.labels[split]).items()}
            with acc.autocast():
                out = model(**batch)
            losses.append(float(out.loss) * len(rows))
            logits.append(out.logits.float().cpu())
        model.train()
        return sum(losses) / max(1, data.num_rows(split)), model.predictions(torch.cat(logits))

    def scores(self, model: SaneForPropertyPrediction, split: str) -> dict:
        """{"loss", property: {"r2", "kendall_tau"} or {"accuracy"}} on a split."""
        from ..downstream.probes import property_score

        loss, predicted = self.predict_split(model, split)
        out = {"loss": loss}
        for spec in model.config.properties:
            out[spec["name"]] = property_score(spec["kind"], self.data.targets[split][spec["name"]], predicted[spec["name"]])
        return out

    def evaluate(self, step: int, epoch: int) -> dict:
        """Validation loss and scores (main process; the others wait); a better validation loss
        saves the weights to best-model/."""
        acc = self.accelerator
        line = {"type": "eval", "step": step, "epoch": epoch}
        if acc.is_main_process:
            t = time.perf_counter()
            model = acc.unwrap_model(self.model)
            scores = self.scores(model, "validation")
            line["val_loss"] = scores.pop("loss")
            for name, values in scores.items():
                line.update({f"val_{metric}/{name}": v for metric, v in values.items()})
            line["eval_seconds"] = time.perf_counter() - t
            previous = [m["val_loss"] for m in self._read_metrics() if m.get("type") == "eval"]
            if not previous or line["val_loss"] < min(previous):
                state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
                atomic_write_bytes(self.output_dir / BEST_DIR / "model.safetensors", save(state))
                atomic_write_json(self.output_dir / BEST_DIR / "best.json", {"epoch": epoch, "step": step,
                                                                            "val_loss": line["val_loss"]})
            self._write_metrics(line)
            acc.log({f"eval/{k}": v for k, v in line.items() if k not in ("type", "step")}, step=step)
            tqdm.write(f"eval epoch {epoch}: val_loss {line['val_loss']:.4f}, " + ", ".join(
                f"{k.split('/')[-1]} {v:.3f}" for k, v in line.items() if k.startswith(("val_r2/", "val_accuracy/"))))
        line = _broadcast(acc, line)
        return line

    # ----------------------------------------------------------------------------- files
    def _save_final(self, global_step: int, evals: list[dict]) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            best = json.loads((self.output_dir / BEST_DIR / "best.json").read_text(encoding="utf-8"))
            state, own = load_file(self.output_dir / BEST_DIR / "model.safetensors"), model.state_dict()
            model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
            model.save_pretrained(self.output_dir, save_function=acc.save)
            self.data.tokenizer.save_pretrained(self.output_dir)
            write_remote_code(self.output_dir)
            results = {"best_epoch": best["epoch"], "best_step": best["step"], "epochs_run": len(evals),
                       "validation": self.scores(model, "validation"), "test": self.scores(model, "test"),
                       "num_rows": {s: self.data.num_rows(s) for s in SPLITS}, "left_out": self.data.left_out,
                       "zoo": str(self.args.zoo), "checkpoint": str(self.args.checkpoint)}
            atomic_write_json(self.output_dir / RESULTS_NAME, results)
            write_finetuned_card(self.output_dir, self.args, model, results)
            atomic_write_text(self.output_dir / COMPLETE_NAME, json.dumps({"global_step": global_step,
                                                                           "best_epoch": best["epoch"]}) + "\n")
        acc.wait_for_everyone()


def _null():
    import contextlib

    return contextlib.nullcontext()


def _broadcast(acc, line: dict) -> dict:
    """The main process's evaluation line on every process (early stopping must agree)."""
    if acc.num_processes == 1:
        return line
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([line])[0]


def write_finetuned_card(output_dir: Path, args: SaneFinetuningArguments, model, results: dict) -> Path:
    """README.md of a fine-tuned checkpoint: the run, and the validation and test scores (model-index)."""
    from huggingface_hub import EvalResult

    from ..cards import (
        FINETUNED_TASK,
        check_model_card,
        sane_model_card,
        save_model_card,
        zoo_card_name,
    )

    zoo = zoo_card_name(args.zoo)
    entries = []
    for split in ("validation", "test"):
        for spec in model.config.properties:
            for metric, value in results[split][spec["name"]].items():
                if isinstance(value, float) and math.isfinite(value):
                    label = {"r2": "R^2", "kendall_tau": "Kendall tau", "accuracy": "accuracy"}[metric]
                    entries.append(EvalResult(
                        task_type="feature-extraction", task_name=FINETUNED_TASK,
                        dataset_type=zoo, dataset_name=zoo, dataset_split=split,
                        metric_type={"r2": "r_squared"}.get(metric, metric), metric_name=f"{label} {spec['name']}",
                        metric_value=value))
    kinds = ", ".join(f"{p['name']} ({p['kind']})" for p in model.config.properties)
    training = (
        f"\nFine-tuned with `hyperrep finetune --checkpoint {args.checkpoint} --zoo {args.zoo} --properties "
        f"{' '.join(args.properties)}`: {'the head only (frozen encoder)' if args.freeze_encoder else 'encoder and head'}, "
        f"{args.pooling} pooling{' with the s(W) statistics' if args.statistics_features else ''}, head hidden width {args.head_hidden_dim or 'none (linear)'}, permutation augmentation "
        f"{args.permutation_augmentation}; AdamW (head lr {args.learning_rate}, encoder lr {args.encoder_learning_rate}, "
        f"weight decay {args.weight_decay}), OneCycle, batch {args.batch_size}, up to {args.epochs} epochs with early "
        f"stopping on the validation loss (patience {args.early_stopping_patience}); the model is that of epoch "
        f"{results['best_epoch']} of {results['epochs_run']}, chosen on validation only. Train / validation / test rows: "
        f"{results['num_rows']['train']} / {results['num_rows']['validation']} / {results['num_rows']['test']}. All "
        "options: `finetuning_args.json`; curves: `metrics.jsonl`.\n")
    description = (
        f"\nThis checkpoint carries a property head (`SaneForPropertyPrediction`) predicting {kinds}:\n\n"
        "```python\nimport hyperrep_hf\nfrom transformers import pipeline\n"
        f"predict = pipeline(\"weight-property-prediction\", model=\"{output_dir.name}\")\n"
        "predict(my_model)  # {property: value}\n```\n\n"
        "`hyperrep_hf.AutoModelForWeightPropertyPrediction.from_pretrained(...)` loads the model itself.\n")
    card = sane_model_card(model.config, model_name=f"Fine-tuned SANE on {zoo}", repo_id=output_dir.name,
                           datasets=[zoo] if zoo == args.zoo else None, eval_results=entries,
                           tags=["weight-property-prediction"], description=description, training=training,
                           left_out=results.get("left_out"))
    check_model_card(card)
    return save_model_card(card, output_dir)


__all__ = ["PropertyData", "SaneFinetuner", "SaneFinetuningArguments", "finetune_sane",
           "parse_finetuning_args", "property_specs", "write_finetuned_card"]
