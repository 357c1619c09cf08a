"""Build a zoo: plan chunks of models, train each chunk as a population, write its shards.

Resumable: a chunk counts as done once its shards and its marker DIR/progress/chunk-XXXXX.json are
written (each atomically); a rerun of the same command skips done chunks and retrains the rest, so
no (model, epoch) row is missing or doubled. Scale-out: under `accelerate launch` / torchrun
(WORLD_SIZE > 1) process r trains chunks r, r + world, ... and writes its own shards; the main
process writes the card once all chunks are done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..files import atomic_write_text
from ..launch import check_launch
from ..layout import WeightLayout
from .architectures import build_model, init_weights
from .card import finalize_zoo
from .dataset import (
    CONFIG_NAME,
    FORMAT,
    HYPERPARAMETER_TYPES,
    METRICS,
    Zoo,
    load_zoo,
    write_shard,
)
from .population import make_population, train_population
from .spec import ModelSpec, ZooSpec, resolve_spec
from .tasks import TaskData, load_task

PROGRESS_DIR = "progress"


def init_model(spec: ZooSpec, model: ModelSpec, input_shape, num_classes) -> torch.nn.Module:
    """A freshly initialised model: PyTorch's init drawn from the model's seed, then `init`."""
    kwargs = spec.architecture_kwargs_for(input_shape, num_classes, model.hyperparameters)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.seed)
        net = build_model(spec.architecture, **kwargs)
    return init_weights(net, model.hyperparameters["init"], generator=torch.Generator().manual_seed(model.seed))


def chunk_size(spec: ZooSpec, parallel: int) -> int:
    """Models per chunk: the population size, or fewer so that `parallel` processes all get a chunk.
    A model's weights do not depend on the chunk it trains in (each has its own init, data order and
    optimizer state), so the plan only decides how the work is shared."""
    return max(1, min(spec.population_size, -(-spec.total_models // max(1, parallel))))


def plan_chunks(spec: ZooSpec, models: list[ModelSpec], size: int | None = None) -> list[list[ModelSpec]]:
    """Groups of models that train together: one activation per group (it cannot be stacked),
    at most `size` (default spec.population_size) models per chunk. Deterministic, so a resumed
    build sees the same plan."""
    size = size or spec.population_size
    stack_key = "activation" if "activation" in spec.architecture_parameters() else None
    groups: dict[str, list[ModelSpec]] = {}
    for m in models:
        groups.setdefault(str(m.hyperparameters[stack_key]) if stack_key else "", []).append(m)
    chunks = []
    for key in sorted(groups):
        ms = groups[key]
        # spread each group evenly over its chunks instead of leaving one small remainder chunk
        n_chunks = -(-len(ms) // size)
        chunks += [ms[i::n_chunks] for i in range(n_chunks)]
    return [sorted(c, key=lambda m: m.model_id) for c in chunks]


def train_chunk(spec: ZooSpec, chunk: list[ModelSpec], task: TaskData, bar=None) -> dict[str, dict[str, list]]:
    """Train one chunk; returns the rows of each split (column -> list; weights as arrays)."""
    device = task.train_x.device
    models = [init_model(spec, m, task.input_shape, task.num_classes).to(device) for m in chunk]
    # BatchNorm / residual models train as a FunctionalPopulation; the example input settles its engine
    population = make_population(models, [m.settings for m in chunk], example_input=task.train_x[:2])
    rows: dict[str, dict[str, list]] = {}

    def on_checkpoint(epoch, metrics, weights):
        for k, m in enumerate(chunk):
            r = rows.setdefault(m.split, {c: [] for c in ("model_id", "epoch", "weights", *METRICS, "architecture", "diverged", *HYPERPARAMETER_TYPES)})
            r["model_id"].append(m.model_id)
            r["epoch"].append(epoch)
            r["weights"].append(weights[k].numpy())
            for name in METRICS:
                r[name].append(float(metrics[name][k]))
            r["architecture"].append(spec.architecture)
            r["diverged"].append(bool(metrics["diverged"][k]))
            r["seed"].append(m.seed)
            for name in HYPERPARAMETER_TYPES:
                if name != "seed":
                    r[name].append(m.hyperparameters[name])

    train_population(population, task, spec.epochs, spec.batch_size, on_checkpoint, spec.checkpoints, progress=bar if bar is not None else False)
    return rows


def _write_chunk(spec: ZooSpec, out: Path, cid: int, chunk: list[ModelSpec], rows: dict, num_weights: int) -> None:
    """A trained chunk's shards, then its marker (each atomic): the chunk counts as done."""
    counts = {}
    for split, cols in rows.items():
        cols["weights"] = np.stack(cols["weights"])
        counts[split] = write_shard(out / "data" / f"{split}-{cid:05d}.parquet", cols, num_weights)
    marker = {"chunk": cid, "models": [m.model_id for m in chunk], "rows": counts}
    atomic_write_text(out / PROGRESS_DIR / f"chunk-{cid:05d}.json", json.dumps(marker))


class _QueueBar:
    """Stands in for the main process's tqdm bar in a worker: model-epochs go back through a queue."""

    def __init__(self, queue):
        self.queue = queue

    def update(self, n: int = 1) -> None:
        self.queue.put(n)


_WORKER_QUEUE = None


def _init_worker(queue) -> None:
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


def _train_and_write(spec: ZooSpec, out: Path, cid: int, chunk: list[ModelSpec], num_weights: int) -> int:
    task = load_task(spec.task, **spec.task_kwargs)
    _write_chunk(spec, out, cid, chunk, train_chunk(spec, chunk, task, _QueueBar(_WORKER_QUEUE)), num_weights)
    return cid


def _build_in_processes(spec: ZooSpec, out: Path, todo, num_weights: int, workers: int, bar) -> None:
    """Train the chunks `todo` [(chunk id, models)] in `workers` processes (spawned: torch's thread
    pools do not survive a fork), advancing `bar` as their model-epochs finish."""
    import multiprocessing
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    done_queue = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(done_queue,)) as pool:
        pending = {pool.submit(_train_and_write, spec, out, cid, chunk, num_weights) for cid, chunk in todo}
        while pending:
            finished, pending = wait(pending, timeout=0.5)
            for future in finished:
                future.result()  # a worker's error surfaces here, with its traceback
            try:
                while True:
                    bar.update(done_queue.get_nowait())
            except queue_module.Empty:
                pass
            bar.set_postfix(chunks=f"{len(todo) - len(pending)}/{len(todo)}")


def _process_state():
    """accelerate's PartialState when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        check_launch()
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def zoo_info(spec: ZooSpec, task: TaskData) -> dict:
    first = spec.models()[0]
    kwargs = spec.architecture_kwargs_for(task.input_shape, task.num_classes, first.hyperparameters)
    layout = WeightLayout.from_state_dict(build_model(spec.architecture, **kwargs).state_dict())
    return {
        "format": FORMAT,
        "version": 1,
        "name": spec.name,
        "architecture": spec.architecture,
        "architecture_kwargs": kwargs,
        "layout": layout.to_dict(),
        "num_weights": layout.num_weights,
        "task": spec.task,
        "input_shape": list(task.input_shape),
        "num_classes": task.num_classes,
        "num_models": spec.total_models,
        "checkpoint_epochs": spec.checkpoints,
        "varied": spec.varied,
        "config": spec.to_dict(),
        "complete": False,
    }


def _claim_folder(out: Path, info: dict) -> None:
    """Write the sidecar of a new build, or check that an existing one is the same zoo (resume)."""
    sidecar = out / CONFIG_NAME
    if sidecar.exists():
        existing = json.loads(sidecar.read_text(encoding="utf-8"))
        if existing.get("config") != json.loads(json.dumps(info["config"])):
            raise ValueError(
                f"{out} already holds a different zoo ({sidecar} has another config); "
                "use a new --out folder, or the same preset/config and --num-models/--epochs to resume"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {CONFIG_NAME}: choose an empty or new --out folder")
    atomic_write_text(sidecar, json.dumps(info, indent=1))


def build_zoo(
    preset_or_spec,
    out_dir: str | os.PathLike,
    num_models: int | None = None,
    epochs: int | None = None,
    population_size: int | None = None,
    progress: bool = True,
    device: str | None = None,
    num_threads: int | None = None,
    workers: int = 1,
) -> Zoo | None:
    """Build (or resume building) a zoo into `out_dir` and return it loaded.

    `preset_or_spec`: a preset name (see spec.PRESETS), a YAML/JSON config path, a dict or a
    ZooSpec; num_models / epochs / population_size override it. Under a multi-process launch
    every process trains its share; the main process returns the Zoo, the others None.
    `num_threads`: torch's CPU threads during the build, default 1 (small models gain little from
    threads, and on a loaded 2-core machine 2 threads made steps 50x slower); restored afterwards.
    `workers`: processes that train chunks at once on this machine (CPU builds; `hyperrep zoo build`
    and the demo use one per core); one progress bar counts them all.
    """
    spec = resolve_spec(preset_or_spec, num_models=num_models, epochs=epochs, population_size=population_size)
    out = Path(out_dir)
    state = _process_state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    device = device or (str(state.device) if state else ("cuda" if torch.cuda.is_available() else "cpu"))
    threads_before = torch.get_num_threads()
    # one thread per process on CPUs: scale out with processes (accelerate launch) instead
    torch.set_num_threads(num_threads or (1 if device == "cpu" else threads_before))
    # denormal floats (from saturated tanh/sigmoid, N(0,1) inits) slow CPU arithmetic many times over
    torch.set_flush_denormal(True)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    if device != "cpu" or state:  # GPUs train big stacks in one process; a launch shares out chunks itself
        workers = 1
    try:
        return _build(spec, out, state, rank, world, device, progress, workers)
    finally:
        torch.set_num_threads(threads_before)
        torch.set_flush_denormal(False)


def _build(spec: ZooSpec, out: Path, state, rank: int, world: int, device: str, progress: bool,
           workers: int = 1) -> Zoo | None:
    sidecar = out / CONFIG_NAME
    task = load_task(spec.task, **spec.task_kwargs)
    spec.check_fits(task.input_shape, task.num_classes)
    info = dict(zoo_info(spec, task), chunk_size=chunk_size(spec, world * workers))
    if rank == 0:
        _claim_folder(out, info)
        # A writer killed mid-shard leaves its temporary file (files.atomic_save); no process of this
        # run writes yet, so any there is stale.
        for tmp in (out / "data").glob(".*.tmp"):
            tmp.unlink()
    if state:
        state.wait_for_everyone()
    existing = json.loads(sidecar.read_text(encoding="utf-8"))
    if existing.get("complete"):
        return load_zoo(out) if rank == 0 else None

    # the plan of the first run (a resumed build keeps it, whatever its number of workers)
    info["chunk_size"] = existing.get("chunk_size", spec.population_size)
    chunks = plan_chunks(spec, spec.models(), info["chunk_size"])
    mine = [(cid, c) for cid, c in enumerate(chunks) if cid % world == rank]
    todo = [(cid, c) for cid, c in mine if not (out / PROGRESS_DIR / f"chunk-{cid:05d}.json").exists()]
    bar = tqdm(
        total=sum(len(c) for _, c in todo) * spec.epochs,
        desc=f"zoo {spec.name}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
        unit="model-epoch",
        disable=not progress,
        dynamic_ncols=True,
    )
    if workers > 1 and len(todo) > 1:
        _build_in_processes(spec, out, todo, info["num_weights"], min(workers, len(todo)), bar)
    else:
        task = task.to(device)
        for cid, chunk in todo:
            _write_chunk(spec, out, cid, chunk, train_chunk(spec, chunk, task, bar), info["num_weights"])
            bar.set_postfix(chunks=f"{cid + 1}/{len(chunks)}")
    bar.close()

    if state:
        state.wait_for_everyone()
    if rank == 0:
        missing = [cid for cid in range(len(chunks)) if not (out / PROGRESS_DIR / f"chunk-{cid:05d}.json").exists()]
        if missing:
            raise RuntimeError(f"chunks {missing} of {out} were not written by their processes; rerun the build to finish them")
        finalize_zoo(out, dict(info, processes=world))
        shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    if state:
        state.wait_for_everyone()
    return load_zoo(out) if rank == 0 else None
