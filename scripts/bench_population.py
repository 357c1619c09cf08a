"""Population training vs one-at-a-time training of the same models, in the same run.

    python scripts/bench_population.py [--models 32] [--train-images 1000] [--json out.json]

For cnn-s on mnist-5k (28x28) and the digits CNN, times one training epoch (batch 10) of M models
trained as a stacked population and of a subset trained one model at a time (plain nn.Module +
torch.optim), and prints model-epochs/s and the ratio. For a narrow ResNet-18 (BatchNorm, residual
blocks; width 8) the same with FunctionalPopulation's "grouped" engine (what engine="auto" picks for
it; `--only resnet-vmap` times the "vmap" engine too): on CIFAR-like random 3x32x32 images
(--bn-train-images of them; no dataset download) and on the built-in 8x8 digits. Also times reading
a saved zoo's weights (rows/s through Zoo.weights, and in slices of 64 rows through datasets' torch
format). Timings on a shared machine are noisy: compare ratios. The defaults keep the whole
`run_benchmarks.py` within 5 minutes on a 2-core CPU without AVX-512 (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hyperrep_hf.files import atomic_write_text
from hyperrep_hf.layout import WeightLayout
from hyperrep_hf.zoo import TaskData, build_model, init_weights, load_task, load_zoo
from hyperrep_hf.zoo.dataset import (
    CONFIG_NAME,
    HYPERPARAMETER_TYPES,
    METRICS,
    write_shard,
)
from hyperrep_hf.zoo.population import (
    FunctionalPopulation,
    LoopPopulation,
    StackedPopulation,
    TrainSettings,
)


def models_for(arch: str, n: int, **kwargs) -> list[torch.nn.Module]:
    kwargs = kwargs or {"activation": "tanh"}
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(init_weights(build_model(arch, **kwargs), "kaiming_uniform", generator=torch.Generator().manual_seed(seed)))
    return out


def random_images(n: int, shape=(3, 32, 32), num_classes: int = 10) -> TaskData:
    """CIFAR-like random images [n, 3, 32, 32] and labels (timing only: nothing to learn)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, num_classes, (n,), generator=g)
    return TaskData("random-3x32x32", x, y, x[:10], y[:10], x[:10], y[:10], num_classes)


def compare(population, loop, task: TaskData, repeats: int, device: str, batch_size: int = 10) -> dict:
    """Best seconds per epoch of `population` and of `loop` (alternating, after a warm-up epoch), as
    wall-clock time and as this process's CPU time (on a CPU with 1 thread, the CPU time is what
    other processes on a shared machine cannot inflate)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(p, epoch):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        p.train_epoch(task, epoch, batch_size)
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    timed(population, 1)  # warm-up (allocations, kernels, the engine's choice)
    timed(loop, 1)
    # alternate the two and keep each one's best epoch: load from other processes comes and goes
    best = {"pop": [float("inf")] * 2, "loop": [float("inf")] * 2}
    for epoch in range(2, 2 + repeats):
        for key, p in (("pop", population), ("loop", loop)):
            best[key] = [min(a, b) for a, b in zip(best[key], timed(p, epoch))]
    return {"t_pop": best["pop"][0], "t_loop": best["loop"][0], "cpu_pop": best["pop"][1], "cpu_loop": best["loop"][1]}


def result_row(arch: str, task: TaskData, num_models: int, num_single: int, times: dict, **extra) -> dict:
    pop_rate, single_rate = num_models / times["t_pop"], num_single / times["t_loop"]
    return {
        "architecture": arch,
        "task": task.name,
        "train_images": len(task.train_y),
        "models": num_models,
        **extra,
        "population_model_epochs_per_s": pop_rate,
        "one_at_a_time_model_epochs_per_s": single_rate,
        "one_at_a_time_s_per_model_epoch": 1 / single_rate,
        "speedup": pop_rate / single_rate,
        "speedup_cpu_time": (num_models / times["cpu_pop"]) / (num_single / times["cpu_loop"]),
    }


def bench_training(arch: str, task_name: str, num_models: int, num_single: int, train_images: int | None, device: str, repeats: int) -> dict:
    task = load_task(task_name, limit=train_images).to(device)
    models = [m.to(device) for m in models_for(arch, num_models)]
    settings = [TrainSettings(seed=i, optimizer="adam", lr=1e-3) for i in range(num_models)]
    stacked = StackedPopulation([copy.deepcopy(m) for m in models], settings)
    loop = LoopPopulation([copy.deepcopy(m) for m in models[:num_single]], settings[:num_single])
    return result_row(arch, task, num_models, num_single, compare(stacked, loop, task, repeats, device), population="stacked")


def bench_functional(task: TaskData, num_models: int, num_single: int, device: str, repeats: int, width: int = 8,
                     variants=(("grouped", True, 10),)) -> list[dict]:
    """ResNet-18 of `width` (BatchNorm, residual blocks): FunctionalPopulation vs one at a time, for
    each variant (engine, channels_last, batch size); the one-at-a-time side uses the same batch size."""
    task = task.to(device)
    models = [m.to(device) for m in models_for("resnet18", num_models, in_channels=task.input_shape[0], width=width)]
    settings = [TrainSettings(seed=i, optimizer="adam", lr=1e-3) for i in range(num_models)]
    rows = []
    for engine, channels_last, batch_size in variants:
        compiled = engine == "grouped+compile"
        engine = "grouped" if compiled else engine
        population = FunctionalPopulation([copy.deepcopy(m) for m in models], settings, engine=engine, channels_last=channels_last)
        extra = {}
        if compiled:  # torch.compile of the grouped network; its first epoch (the compilation) timed apart
            population.grouped = torch.compile(population.grouped)
            t0 = time.perf_counter()
            population.train_epoch(task, 0, batch_size)
            extra["compile_and_first_epoch_s"] = time.perf_counter() - t0
        loop = LoopPopulation([copy.deepcopy(m) for m in models[:num_single]], settings[:num_single])
        label = f"functional/{engine}" + (" compiled" if compiled else "") + ("" if channels_last or engine == "vmap" else ", NCHW")
        label += "" if batch_size == 10 else f", batch {batch_size}"
        rows.append(result_row(f"resnet18-w{width}", task, num_models, num_single, compare(population, loop, task, repeats, device, batch_size),
                               population=label, **extra))
    return rows


def _conv_step(inputs, weights, groups: int) -> None:
    for x, w in zip(inputs, weights):
        torch.nn.functional.conv2d(x, w, None, 1, 1, 1, groups).sum().backward()


def bench_conv_layers(num_models: int, batch_size: int = 10, width: int = 8, repeats: int = 5) -> list[dict]:
    """Why a ResNet-18 population gains little on 32x32 inputs: one 3x3 convolution of each stage of a
    width-`width` ResNet-18 on 3x32x32 inputs (C channels at H x H), forward + backward, as one grouped
    convolution over `num_models` models (what the grouped engine runs) against `num_models` separate
    convolutions (one at a time), best of `repeats`; GFLOP/s beside a 1024^3 matmul, one core's
    practical peak."""

    def best_ms(fn, *args):
        fn(*args)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
        return 1e3 * min(times)

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    peak = 2 * 1024**3 / (best_ms(lambda: a @ b) / 1e3) / 1e9
    rows, M = [], num_models
    for k, (C, H) in enumerate([(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)]):
        x = torch.randn(batch_size, M * C, H, H).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(M * C, C, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
        xs = [torch.randn(batch_size, C, H, H).contiguous(memory_format=torch.channels_last).requires_grad_() for _ in range(M)]
        ws = [torch.randn(C, C, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_() for _ in range(M)]
        grouped = best_ms(_conv_step, [x], [w], M)
        separate = best_ms(_conv_step, xs, ws, 1)
        flop = 3 * 2 * batch_size * M * C * C * 9 * H * H  # forward + the two gradients
        rows.append({"stage": k + 1, "channels": C, "size": H, "grouped_ms": grouped, "one_at_a_time_ms": separate,
                     "speedup": separate / grouped, "grouped_gflops": flop / grouped / 1e6,
                     "one_at_a_time_gflops": flop / separate / 1e6, "matmul_gflops": peak})
    return rows


def bench_reading(rows: int, architecture: str = "cnn-s") -> dict:
    """Rows/s reading the weights of a saved zoo of `rows` synthetic rows (layout of `architecture`)."""
    model = build_model(architecture)
    layout = WeightLayout.from_state_dict(model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "zoo"
        per_shard = 2000
        for shard, start in enumerate(range(0, rows, per_shard)):
            n = min(per_shard, rows - start)
            cols = {name: [0.0] * n for name in METRICS}
            cols.update({"model_id": list(range(start, start + n)), "epoch": [0] * n, "architecture": [architecture] * n,
                         "diverged": [False] * n, "weights": np.random.default_rng(shard).standard_normal((n, layout.num_weights), dtype=np.float32)})
            cols.update({k: [None] * n for k in HYPERPARAMETER_TYPES})
            write_shard(out / "data" / f"train-{shard:05d}.parquet", cols, layout.num_weights)
        info = {"architecture": architecture, "architecture_kwargs": {}, "layout": layout.to_dict(), "num_weights": layout.num_weights, "complete": True}
        atomic_write_text(out / CONFIG_NAME, json.dumps(info))
        zoo = load_zoo(out)
        t0 = time.perf_counter()
        w = zoo.weights("train")
        t_first = time.perf_counter() - t0  # pages of the memory-mapped arrow file come from disk
        t0 = time.perf_counter()
        w = zoo.weights("train")
        t_column = time.perf_counter() - t0
        ds = zoo.dataset["train"].with_format("torch")
        t0 = time.perf_counter()
        for s in range(0, len(ds), 64):
            ds[s : s + 64]["weights"]
        t_slices = time.perf_counter() - t0
        return {"rows": int(w.shape[0]), "weights_per_row": int(w.shape[1]), "rows_per_s_whole_column_first_read": w.shape[0] / t_first, "rows_per_s_whole_column": w.shape[0] / t_column, "rows_per_s_slices_of_64": len(ds) / t_slices}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=32, help="models in the population")
    p.add_argument("--single", type=int, default=3, help="models timed one at a time")
    p.add_argument("--train-images", type=int, default=500, help="mnist-5k training images per epoch (4000 = all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per side, alternating; the best counts")
    p.add_argument("--bn-train-images", type=int, default=60, help="random 3x32x32 images per ResNet-18 epoch")
    p.add_argument("--bn-digits-images", type=int, default=150, help="digits images per ResNet-18 epoch")
    p.add_argument("--read-rows", type=int, default=10000, help="rows of the synthetic zoo read back")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a shared CPU)")
    p.add_argument("--only", nargs="+", choices=("stacked", "resnet", "resnet-vmap", "resnet-variants", "conv-layers", "reading"),
                   default=["stacked", "resnet", "reading"],
                   help="parts to run (default: stacked resnet reading); resnet-vmap: the ResNet-18 cases with the vmap "
                        "engine as well; resnet-variants: the ResNet-18 3x32x32 case with the grouped engine on NCHW "
                        "tensors, with batches of 32 and 64, and under torch.compile; conv-layers: one convolution of "
                        "each ResNet-18 stage, grouped over the population vs one at a time, in GFLOP/s")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as build_zoo does, for both sides
    training = []
    if "stacked" in args.only:
        training += [
            bench_training("cnn-s", "mnist-5k", args.models, args.single, args.train_images, args.device, args.repeats),
            bench_training("cnn-digits", "digits", args.models, args.single, None, args.device, args.repeats),
        ]
    if "resnet" in args.only or "resnet-vmap" in args.only:
        engines = (("grouped", True, 10),) + ((("vmap", True, 10),) if "resnet-vmap" in args.only else ())
        for task in (random_images(args.bn_train_images), load_task("digits", limit=args.bn_digits_images)):
            training += bench_functional(task, args.models, args.single, args.device, args.repeats, variants=engines)
    if "resnet-variants" in args.only:
        variants = (("grouped", False, 10), ("grouped", True, 32), ("grouped", True, 64), ("grouped+compile", True, 10))
        training += bench_functional(random_images(max(args.bn_train_images, 320)), args.models, args.single, args.device, args.repeats, variants=variants)
    results = {"device": args.device, "threads": torch.get_num_threads(), "training": training}
    if "conv-layers" in args.only:
        results["conv_layers"] = bench_conv_layers(args.models)
    if "reading" in args.only:
        results["reading"] = bench_reading(args.read_rows)
    print(f"device {args.device}, {results['threads']} threads, population of {args.models}, batch 10")
    if training:
        print(f"{'model':<12} {'population':<30} {'task':<14} {'images':>6} {'one-at-a-time s/model-epoch':>28} {'population model-epochs/s':>26} {'one-at-a-time model-epochs/s':>29} {'speedup':>8} {'(CPU time)':>10}")
    for r in results["training"]:
        if "compile_and_first_epoch_s" in r:
            print(f"  (torch.compile: first epoch with the compilation {r['compile_and_first_epoch_s']:.1f} s)")
        print(f"{r['architecture']:<12} {r['population']:<30} {r['task']:<14} {r['train_images']:>6} {r['one_at_a_time_s_per_model_epoch']:>28.3f} {r['population_model_epochs_per_s']:>26.2f} {r['one_at_a_time_model_epochs_per_s']:>29.2f} {r['speedup']:>7.1f}x {r['speedup_cpu_time']:>9.1f}x")
    for r in results.get("conv_layers", []):
        print(f"ResNet-18 w8 stage {r['stage']} conv 3x3 ({r['channels']} ch, {r['size']}x{r['size']}), fwd+bwd x {args.models} models: "
              f"grouped {r['grouped_ms']:.1f} ms ({r['grouped_gflops']:.1f} GFLOP/s), one at a time {r['one_at_a_time_ms']:.1f} ms "
              f"({r['one_at_a_time_gflops']:.1f} GFLOP/s): {r['speedup']:.2f}x; a matmul runs at {r['matmul_gflops']:.0f} GFLOP/s")
    rd = results.get("reading")
    if rd:
        print(f"reading a saved zoo ({rd['rows']} rows x {rd['weights_per_row']} weights): {rd['rows_per_s_whole_column_first_read']:,.0f} rows/s whole column (first read), {rd['rows_per_s_whole_column']:,.0f} (again), {rd['rows_per_s_slices_of_64']:,.0f} rows/s in slices of 64")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
