"""The Accelerate training loop of SANE on model zoos.

    from hyperrep_hf.training import SaneTrainingArguments, train_sane
    result = train_sane(SaneTrainingArguments(zoo=["zoos/mnist-seed"], output_dir="runs/sane", epochs=20))

Runs unchanged on one CPU, one GPU or several processes (`accelerate launch`). Only the main
process writes files. OUT (output_dir) receives:

    config.json, model.safetensors     the final SaneModel (AutoModel.from_pretrained(OUT))
    *.py                               the code of model, tokenizer and pipelines (trust_remote_code)
    preprocessor_config.json           the weight tokenizer with its standardisation (train split only)
    training_args.json                 every option of the run
    metrics.jsonl                      one JSON object per log line ("train", "eval", "error")
    runs/                              TensorBoard (and trackio, if installed) logs
    checkpoints/step-NNNNNNN/          accelerator.save_state + trainer_state.json, the last few
    README.md                          model card
    training_complete.json             written last, atomically: the run finished and every file
                                       above is final (check it, not model.safetensors)

A checkpoint folder is written under a temporary name and renamed when complete. Resuming
continues exactly or is refused: with other options, another zoo, another number of processes or
another optimizer-step count per epoch. `overwrite_output_dir` deletes the old run's checkpoints,
metrics and completion marker first, so a later `resume="last"` can only continue the new run.

Reproducibility: the order of the rows in epoch e and the augmentation of batch b are drawn from
generators seeded by (seed, e) and (seed, e, b), and checkpoints hold model, optimizer, schedule and
RNG states, so a resumed run repeats the losses an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..configuration_sane import PRESETS, SaneConfig
from ..files import atomic_write_text
from ..launch import check_launch
from ..modeling_sane import SaneModel
from ..precision import auto_mixed_precision
from ..remote_code import write_remote_code
from .arguments import SaneTrainingArguments, parse_epochs
from .card import write_model_card
from .data import Augmentation, ZooData
from .evaluation import encode_split, probe_scores

CHECKPOINT_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
ARGS_NAME = "training_args.json"
METRICS_NAME = "metrics.jsonl"
TOKENIZER_NAME = "preprocessor_config.json"
COMPLETE_NAME = "training_complete.json"


def is_trained(output_dir: str | Path) -> bool:
    """True when `output_dir` holds a finished run: its completion marker, written after every
    other file, exists (a run killed while saving the final model leaves no marker)."""
    return (Path(output_dir) / COMPLETE_NAME).is_file()


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before applying that update."""


@dataclass
class TrainResult:
    """What `train_sane` returns (on every process; metrics are filled on the main process)."""

    output_dir: Path
    global_step: int
    epoch: int
    finished: bool
    last_checkpoint: Path | None
    eval_history: list[dict] = field(default_factory=list)
    train_history: list[dict] = field(default_factory=list)


def train_sane(args: SaneTrainingArguments, trainer_class: type | None = None) -> TrainResult:
    """Train SANE as `args` says; see the module docstring for what lands in args.output_dir."""
    return (trainer_class or SaneTrainer)(args).train()


def batch_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, batch, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def epoch_batches(num_rows: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Shuffled row indices of one epoch cut into batches; a last batch of one row (no negatives
    for the contrastive loss) joins the one before."""
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(batch_seed(seed, epoch, 0)))
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


class Prefetcher:
    """Builds the next `depth` batches in a background thread while the model computes (torch ops
    release the GIL). Each batch has its own seeded generator, so the thread changes no result.
    `next()` returns (batch, seconds the loop waited for it)."""

    def __init__(self, make, items: list, depth: int):
        from concurrent.futures import ThreadPoolExecutor

        self.make, self.items, self.depth = make, list(items), depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sane-data") if depth > 0 else None
        self.pending: list = []
        self.position = 0
        self._fill()

    def _fill(self) -> None:
        while self.pool is not None and len(self.pending) < self.depth and self.position < len(self.items):
            self.pending.append(self.pool.submit(self.make, self.items[self.position]))
            self.position += 1

    def next(self):
        t = time.perf_counter()
        if self.pool is None:
            batch = self.make(self.items[self.position])
            self.position += 1
        else:
            batch = self.pending.pop(0).result()
            self._fill()
        return batch, time.perf_counter() - t

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    """"last" -> the newest complete checkpoint in output_dir/checkpoints; else `resume` as a folder."""
    if resume != "last":
        path = Path(resume)
        if not (path / STATE_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a training checkpoint (it has no {STATE_NAME})")
        return path
    done = sorted(p for p in (output_dir / CHECKPOINT_DIR).glob("step-*") if (p / STATE_NAME).is_file())
    if not done:
        raise ValueError(f"--resume: {output_dir / CHECKPOINT_DIR} holds no complete checkpoint to continue from; "
                         "start without --resume")
    return done[-1]


class SaneTrainer:
    """One training run. `train()` does everything; the pieces are methods so tests and
    subclasses can reach them (e.g. `compute_loss`)."""

    def __init__(self, args: SaneTrainingArguments):
        self.args = args
        self.output_dir = Path(args.output_dir)

    # ----------------------------------------------------------------------------- set-up
    def _accelerator(self):
        from accelerate import Accelerator, PartialState
        from accelerate.state import AcceleratorState

        cpu = not torch.cuda.is_available()
        precision = self.args.mixed_precision
        if precision == "auto":
            precision = auto_mixed_precision("cpu" if cpu else "cuda")
        trackers = [t for t in self.args.report_to if t != "none"]
        # trackio is used when installed; asking for it does not make it a dependency
        trackers = [t for t in trackers if t != "trackio" or importlib.util.find_spec("trackio")]
        if "tensorboard" in trackers and not importlib.util.find_spec("tensorboard"):
            trackers.remove("tensorboard")
        state = AcceleratorState._shared_state
        if state and state.get("_mixed_precision") != precision and PartialState().num_processes == 1:
            # accelerate keeps one precision per process; a second run in the same Python session
            # (a notebook) may ask for another one
            AcceleratorState._reset_state()
        check_launch()
        acc = Accelerator(cpu=cpu, mixed_precision=precision, log_with=trackers or None, project_dir=str(self.output_dir))
        if cpu and acc.num_processes > 1:
            # ranks share the cores; oversubscription slows every rank down
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // acc.num_processes))
        return acc

    def _check_output_dir(self) -> Path | None:
        args, out = self.args, self.output_dir
        if args.resume:
            return find_checkpoint(out, args.resume)
        taken = (out / CHECKPOINT_DIR).is_dir() or (out / ARGS_NAME).is_file()
        if taken and not args.overwrite_output_dir:
            raise ValueError(f"{out} already holds a training run; pass --resume to continue it, "
                             "--overwrite_output_dir true to start over, or choose another --output_dir")
        return None

    def _clear_previous_run(self) -> None:
        """overwrite_output_dir: delete the old run's checkpoints and metrics, so nothing of it can
        be resumed or mistaken for the new run (main process, before any write)."""
        out = self.output_dir
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        (out / METRICS_NAME).unlink(missing_ok=True)

    def _model_config(self, data: ZooData) -> SaneConfig:
        args = self.args
        overrides = {k: getattr(args, k) for k in ("d_model", "num_layers", "num_heads", "latent_dim", "window_size", "dropout")
                     if getattr(args, k) is not None}
        preset = PRESETS[args.preset]
        # position tables must cover the zoo's sequences, layers and channels
        needed = (data.max_tokens, data.num_layers, data.max_channels)
        max_positions = tuple(max(a, b) for a, b in zip(preset["max_positions"], needed))
        return SaneConfig.from_preset(args.preset, **{**overrides, "token_size": data.tokenizer.token_size,
                                                     "max_positions": max_positions, "gamma": args.gamma,
                                                     "temperature": args.temperature,
                                                     "layer_loss_norm": args.layer_loss_norm != "none"})

    def _optimizer(self, model: SaneModel) -> torch.optim.Optimizer:
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.args.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.args.learning_rate)

    def _check_resume_steps(self, checkpoint: Path, num_processes: int, steps_per_epoch: int) -> None:
        """Refuse a resume whose optimizer steps would not line up with the checkpoint's: another
        number of processes changes the effective batch and so the steps per epoch and schedule."""
        state = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
        saved = state.get("num_processes", 1)
        if saved != num_processes:
            raise ValueError(
                f"cannot resume from {checkpoint}: it was written by a run on {saved} process(es), this run has "
                f"{num_processes}, which changes the effective batch ({self._effective_batch(saved)} models per optimizer "
                f"step in the run, {self._effective_batch(num_processes)} now) and the step count; resume with "
                f"{saved} process(es) (accelerate launch --num_processes {saved}) or start a new --output_dir")
        saved_steps = state.get("steps_per_epoch", steps_per_epoch)
        if saved_steps != steps_per_epoch:
            raise ValueError(f"cannot resume from {checkpoint}: the run took {saved_steps} optimizer steps per epoch, "
                             f"this one would take {steps_per_epoch} (a changed zoo or batch?); start a new --output_dir")

    def _effective_batch(self, num_processes: int) -> int:
        return self.args.batch_size * self.args.gradient_accumulation_steps * num_processes

    def _check_resume_compatible(self, data: ZooData) -> None:
        saved_args = self.output_dir / ARGS_NAME
        if saved_args.is_file():
            before = SaneTrainingArguments.from_dict(json.loads(saved_args.read_text(encoding="utf-8")))
            diff = before.differences(self.args)
            if diff:
                listing = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in ((k, *v) for k, v in diff.items()))
                raise ValueError(f"cannot resume {self.output_dir}: the options differ from the run's ({listing}); "
                                 "resume with the run's options or start a new --output_dir")
        saved_tok = self.output_dir / TOKENIZER_NAME
        if saved_tok.is_file():
            before = json.loads(saved_tok.read_text(encoding="utf-8"))
            if before.get("layouts") != json.loads(data.tokenizer.to_json_string()).get("layouts"):
                raise ValueError(f"cannot resume {self.output_dir}: the zoo's token layout or train-split "
                                 "standardisation differs from the run's (a different or changed zoo?)")

    # ----------------------------------------------------------------------------- the run
    args_name = ARGS_NAME  # the file in output_dir the run's arguments are saved to

    def _start_run(self) -> Path | None:
        """Check output_dir, make the accelerator, seed; returns the checkpoint to resume from (or None)."""
        from accelerate.utils import set_seed

        args = self.args
        checkpoint = self._check_output_dir()
        acc = self.accelerator = self._accelerator()
        set_seed(args.seed)
        if acc.is_main_process:
            # the folder holds an unfinished run until this one ends
            (self.output_dir / COMPLETE_NAME).unlink(missing_ok=True)
            if checkpoint is None and args.overwrite_output_dir:
                self._clear_previous_run()
        acc.wait_for_everyone()
        return checkpoint

    def _schedule(self, num_train: int, checkpoint: Path | None) -> tuple[int, int, int]:
        """(micro-batches per process and epoch, optimizer steps per epoch, total steps) for `num_train`
        rows; a resumed run must have the checkpoint's steps per epoch."""
        args, world = self.args, self.accelerator.num_processes
        batches_per_epoch = len(epoch_batches(num_train, args.batch_size, args.seed, 0))
        micro_per_rank = math.ceil(batches_per_epoch / world)
        self.steps_per_epoch = math.ceil(micro_per_rank / args.gradient_accumulation_steps)
        if checkpoint is not None:
            self._check_resume_steps(checkpoint, world, self.steps_per_epoch)
        return micro_per_rank, self.steps_per_epoch, self.steps_per_epoch * args.epochs

    def _restore(self, checkpoint: Path | None) -> tuple[int, int, int]:
        """Load `checkpoint` (None: a fresh run), save the run's arguments, start the trackers; returns
        where the run stands: (global_step, epoch, micro_step)."""
        acc, args = self.accelerator, self.args
        position = (0, 0, 0)
        if checkpoint is not None:
            acc.load_state(str(checkpoint))
            state = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
            position = state["global_step"], state["epoch"], state["micro_step"]
            if acc.is_main_process:
                self._truncate_metrics(position[0])
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / self.args_name, args.to_json_string())
        if acc.trackers or acc.log_with:
            acc.init_trackers("runs", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                              for k, v in args.to_dict().items()})
        return position

    def train(self) -> TrainResult:
        args = self.args
        checkpoint = self._start_run()
        acc = self.accelerator
        main = acc.is_main_process
        with acc.main_process_first():
            data = ZooData.from_zoos(args.zoo, token_size=args.token_size, epochs=parse_epochs(args.zoo_epochs),
                                     standardize=args.standardize, need_permutations=args.views != "stored-both",
                                     properties=args.probe_properties, align=args.align, statistics=args.statistics,
                                     soft_clip=args.tokenizer_soft_clip, drop_exploded=args.drop_exploded)
        self.data = data
        if checkpoint is not None:
            self._check_resume_compatible(data)
        config = self._model_config(data)
        model = SaneModel(config)
        if config.layer_loss_norm:
            model.set_layer_sigma(data.token_statistics(args.layer_loss_norm))
        optimizer = self._optimizer(model)

        num_train = data.num_rows("train")
        world, rank = acc.num_processes, acc.process_index
        micro_per_rank, steps_per_epoch, total_steps = self._schedule(num_train, checkpoint)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.learning_rate, total_steps=total_steps,
                                                        pct_start=args.pct_start, anneal_strategy="cos")
        # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step it
        # once per process), but it travels with the checkpoints.
        model, optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(scheduler)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

        global_step, start_epoch, start_micro = self._restore(checkpoint)
        if main:
            data.tokenizer.to_json_file(self.output_dir / TOKENIZER_NAME)
        window = config.window_size
        aug = Augmentation(args.views, args.multiplicative_noise, args.additive_noise, args.erase_probability)
        result = TrainResult(self.output_dir, global_step, start_epoch, False, checkpoint)
        self.last_checkpoint = checkpoint
        self.prefetcher = None
        if main:
            n_params = sum(p.numel() for p in acc.unwrap_model(model).parameters())
            left_out = f", {data.num_exploded()} exploded checkpoints left out" if data.num_exploded() else ""
            print(f"SANE {args.preset} ({args.recipe} recipe): {n_params:,} parameters, token size {config.token_size}, window {window}; "
                  f"{num_train} training rows ({len(data.groups)} zoo(s){left_out}), {steps_per_epoch} steps/epoch x "
                  f"{args.epochs} epochs on {world} process(es), {acc.device}, precision {acc.mixed_precision}")
            if window > data.max_tokens:
                print(f"note: window {window} is longer than every model ({data.max_tokens} tokens at most): each window is "
                      f"a whole model, as with --window_size {data.max_tokens}")
        if args.eval_at_start and checkpoint is None:
            result.eval_history.append(self.evaluate(0, 0))

        bar = tqdm(total=total_steps, initial=global_step, desc="SANE", unit="step", dynamic_ncols=True,
                   disable=not (main and args.progress))
        window_stats = {"loss": 0.0, "reconstruction_loss": 0.0, "contrastive_loss": 0.0, "data_time": 0.0,
                        "step_time": 0.0, "samples": 0, "tokens": 0, "steps": 0, "learning_rate": 0.0}
        try:
            for epoch in range(start_epoch, args.epochs):
                batches = epoch_batches(num_train, args.batch_size, args.seed, epoch)
                mine = [(i * world + rank) % len(batches) for i in range(micro_per_rank)]
                micro = start_micro if epoch == start_epoch else 0
                self.prefetcher = Prefetcher(
                    lambda b, batches=batches, epoch=epoch: self.make_batch(batches[b], epoch, b, window, aug),
                    mine[micro:], args.prefetch_batches)
                while micro < micro_per_rank:
                    group = mine[micro:micro + args.gradient_accumulation_steps]
                    stats = self._optimizer_step(group, batches, global_step)
                    global_step += 1
                    micro += len(group)
                    for k in window_stats:
                        window_stats[k] += stats[k] if k != "steps" else 1
                    window_stats["learning_rate"] = stats["learning_rate"]  # the last step's, not a sum
                    bar.update(1)
                    if global_step % args.logging_steps == 0 or micro >= micro_per_rank:
                        line = self._log_train(window_stats, global_step, epoch + micro / micro_per_rank)
                        result.train_history.append(line)
                        bar.set_postfix(loss=f"{line['loss']:.4f}", data=f"{100 * line['data_share']:.0f}%")
                        window_stats = dict.fromkeys(window_stats, 0.0)
                    if args.stop_after_steps is not None and global_step >= args.stop_after_steps and global_step < total_steps:
                        self._save_checkpoint(global_step, epoch, micro)
                        result.global_step, result.epoch, result.last_checkpoint = global_step, epoch, self.last_checkpoint
                        return result
                if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
                    result.eval_history.append(self.evaluate(global_step, epoch + 1))
                if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
                    self._save_checkpoint(global_step, epoch + 1, 0)
            self._save_final(global_step)
            result.global_step, result.epoch, result.finished = global_step, args.epochs, True
            result.last_checkpoint = self.last_checkpoint
            return result
        finally:
            bar.close()
            if self.prefetcher is not None:
                self.prefetcher.close()
            acc.end_training()

    def compute_loss(self, batch, global_step: int):
        """The SaneOutput of one micro-batch of two views (a hook for subclasses and tests)."""
        return self.model(**batch.model_inputs(), num_views=2)

    def make_batch(self, rows: torch.Tensor, epoch: int, index: int, window: int, aug: Augmentation):
        """Two augmented views of batch `index` of `epoch`, from its own seeded generator."""
        generator = torch.Generator().manual_seed(batch_seed(self.args.seed, epoch, index + 1))
        return self.data.training_batch(rows, window, generator, aug)

    def _optimizer_step(self, group: list[int], batches, global_step: int) -> dict:
        """Forward/backward every micro-batch of `group` (gradient accumulation), then one update."""
        acc, model, args = self.accelerator, self.model, self.args
        t0 = time.perf_counter()
        data_time = 0.0
        sums = torch.zeros(3, dtype=torch.float64)
        samples = tokens = 0
        for j, b in enumerate(group):
            t = time.perf_counter()
            batch, _ = self.prefetcher.next()
            batch = batch.to(acc.device)
            data_time += time.perf_counter() - t  # the time the loop waited for data
            last = j == len(group) - 1
            # gradients are averaged across processes only on the last micro-batch of the group
            sync = contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(model)
            with sync:
                out = self.compute_loss(batch, global_step)
                acc.backward(out.loss / len(group))
            parts = [out.loss, out.reconstruction_loss, out.contrastive_loss]
            sums += torch.tensor([float(p.detach()) if p is not None else 0.0 for p in parts], dtype=torch.float64)
            samples += len(batches[b])
            tokens += batch.num_tokens
        mean = acc.reduce(sums.to(acc.device) / len(group), reduction="mean").cpu()
        if not torch.isfinite(mean).all():
            self._diverged(global_step + 1, float(mean[0]))
        if args.max_grad_norm is not None:
            acc.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(mean[0]), "reconstruction_loss": float(mean[1]), "contrastive_loss": float(mean[2]),
                "learning_rate": learning_rate, "data_time": data_time, "step_time": time.perf_counter() - t0,
                "samples": samples * acc.num_processes, "tokens": tokens * acc.num_processes}

    def _diverged(self, step: int, loss: float) -> None:
        last = self.last_checkpoint
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        message = (f"the training loss became {loss} at optimizer step {step}; training stopped "
                   f"before applying that update, {where}. Lower --learning_rate, set --max_grad_norm, or check the zoo")
        if self.accelerator.is_main_process:
            self._write_metrics({"type": "error", "step": step, "loss": loss,
                                 "last_checkpoint": str(last) if last else None, "message": message})
        raise TrainingDivergedError(message)

    # ----------------------------------------------------------------------------- logging
    def _write_metrics(self, line: dict) -> None:
        with open(self.output_dir / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def _truncate_metrics(self, global_step: int) -> None:
        """Drop log lines after the checkpoint we resume from: those steps are about to be redone."""
        path = self.output_dir / METRICS_NAME
        if not path.is_file():
            return
        keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln).get("step", 0) <= global_step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def _log_train(self, s: dict, step: int, epoch: float) -> dict:
        n = max(1, int(s["steps"]))
        line = {"type": "train", "step": step, "epoch": round(epoch, 4),
                "loss": s["loss"] / n, "reconstruction_loss": s["reconstruction_loss"] / n,
                "contrastive_loss": s["contrastive_loss"] / n, "learning_rate": s["learning_rate"],
                "data_share": s["data_time"] / max(s["step_time"], 1e-12),
                "seconds_per_step": s["step_time"] / n, "data_seconds_per_step": s["data_time"] / n,
                "samples_per_s": s["samples"] / max(s["step_time"], 1e-12),
                "tokens_per_s": s["tokens"] / max(s["step_time"], 1e-12)}
        if self.accelerator.is_main_process:
            self._write_metrics(line)
        self.accelerator.log({f"train/{k}": v for k, v in line.items() if k not in ("type", "step")}, step=step)
        return line

    def evaluate(self, step: int, epoch: int) -> dict:
        """Validation reconstruction and probes (main process only; the others wait)."""
        acc = self.accelerator
        line = {"type": "eval", "step": step, "epoch": epoch}
        if acc.is_main_process:
            t = time.perf_counter()
            model = acc.unwrap_model(self.model)
            window = model.config.window_size
            splits = ["train", "validation"] + (["test"] if self.data.num_rows("test") else [])
            encoded = {s: encode_split(model, self.data, s, window, self.args.eval_batch_size, acc.device, acc.autocast)
                       for s in splits}
            line["val_reconstruction_loss"] = encoded["validation"]["reconstruction_loss"]
            line["val_reconstruction_r2"] = encoded["validation"]["reconstruction_r2"]
            line["train_reconstruction_r2"] = encoded["train"]["reconstruction_r2"]
            line.update(probe_scores(self.data, {s: e["embeddings"] for s, e in encoded.items()}, self.args.probe_properties))
            line["eval_seconds"] = time.perf_counter() - t
            self._write_metrics(line)
            acc.log({f"eval/{k}": v for k, v in line.items() if k not in ("type", "step")}, step=step)
            shown = {k.split("/")[-1] if k.startswith("probe_val") else k: round(v, 4) for k, v in line.items()
                     if k.startswith(("val_rec", "probe_val"))}
            tqdm.write(f"eval epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        acc.wait_for_everyone()
        return line

    # ----------------------------------------------------------------------------- files
    def _save_checkpoint(self, global_step: int, epoch: int, micro: int) -> None:
        """save_state into a temporary folder, then rename: a checkpoint folder is always complete."""
        acc = self.accelerator
        root = self.output_dir / CHECKPOINT_DIR
        final = root / f"step-{global_step:07d}"
        tmp = root / f".tmp-step-{global_step:07d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"global_step": global_step, "epoch": epoch, "micro_step": micro,
                     "num_processes": acc.num_processes, "steps_per_epoch": self.steps_per_epoch,
                     "effective_batch": self._effective_batch(acc.num_processes)}
            (tmp / STATE_NAME).write_text(json.dumps(state), encoding="utf-8")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            old = sorted(p for p in root.glob("step-*") if p != final)
            for p in old[: max(0, len(old) - (self.args.save_total_limit - 1))]:
                shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()
        self.last_checkpoint = final

    def _save_final(self, global_step: int) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            model.save_pretrained(self.output_dir, save_function=acc.save)
            self.data.tokenizer.save_pretrained(self.output_dir)
            write_remote_code(self.output_dir)  # tokenizer and pipelines load without hyperrep_hf too
            write_model_card(self.output_dir, self.args, model, self.data, self._read_metrics())
            # last: only a run whose every file is written counts as trained
            atomic_write_text(self.output_dir / COMPLETE_NAME,
                              json.dumps({"global_step": global_step, "recipe": self.args.recipe}) + "\n")
        acc.wait_for_everyone()

    def _read_metrics(self) -> list[dict]:
        path = self.output_dir / METRICS_NAME
        return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln] if path.is_file() else []
