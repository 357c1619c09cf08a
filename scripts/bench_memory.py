"""Benchmark: peak anonymous memory (RssAnon) of `hyperrep train` against the size of the zoo.

    python scripts/bench_memory.py                          # 100 full-width ResNet-18 rows (4.5 GB) and 50
    python scripts/bench_memory.py --models 20 --width 16   # quick: narrow ResNet-18s
    python scripts/bench_memory.py --eager-ref f2a54ef~1    # also the eager path of that commit (smallest zoo)

Writes synthetic zoos of random ResNet-18 weights (one checkpoint per model, BatchNorm variances
positive) with the importers' writer (zoo/importers/writer.py) into a temporary folder, runs a short
`hyperrep train` on each in a subprocess (tiny SANE, window --window tokens, --steps optimizer
steps, --eval_every 1000: no evaluation pass; --with-eval adds one before training, which
tokenises chunks of at most downstream.embedding.EMBED_TOKEN_BYTES of tokens) and samples the
subprocess's RssAnon (/proc/PID/status) every 10 ms; the peak is the largest sample (a spike
shorter than 10 ms can be missed). The zoos are deleted afterwards
(--keep keeps them). Prints peak RssAnon against the zoo's size for the full zoo and one half its
size: the lazy pipeline's peak must not grow with the zoo (goal: under 3 GB for ResNet-18).

--eager-ref REV runs the same command with the package as it was at git revision REV (exported with
`git archive` to the temporary folder and put first on PYTHONPATH) on the smallest zoo only, killed
when its RssAnon passes --eager-limit GB; its datasets cache goes to the temporary folder too.
Without it the eager figure is an estimate: the [rows, P] float32 tensors of all three splits.

--speed also times the data pipeline alone (ZooData.training_batch, ms per batch of --batch_size
models, one thread, the same rows and seeds) on two small synthetic zoos (CNN-s, 300 rows; ResNet-18
width 16, 60 rows): this tree with the split in memory (the default below IN_MEMORY_SPLIT_BYTES),
this tree reading every batch from the parquet shards (lazy), and with --eager-ref the eager pipeline
of that revision; ratios against the eager one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_resnet_zoo(out: Path, num_models: int, width: int, seed: int = 0):
    """A zoo of `num_models` random ResNet-18 checkpoints (one row each), written with write_zoo."""
    import torch

    from hyperrep_hf.layout import WeightLayout
    from hyperrep_hf.zoo import build_model
    from hyperrep_hf.zoo.importers.writer import model_splits, write_zoo

    layout = WeightLayout.from_state_dict(build_model("resnet18", width=width).state_dict())
    positive = torch.zeros(layout.num_weights, dtype=torch.bool)
    for e, o in zip(layout.entries, layout.offsets):
        positive[o:o + e.numel] = e.name.endswith("running_var")

    def rows(i):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        w = torch.randn(layout.num_weights, generator=g) * 0.05
        w[positive] = w[positive].abs() + 0.5
        yield {"epoch": 0, "weights": w.numpy(), "source": f"random-{i}", "test_acc": float(torch.rand(1, generator=g))}

    info = {"name": out.name, "architecture": "resnet18", "architecture_kwargs": {"width": width}, "task": None,
            "config": {"synthetic": "random weights, bench_memory.py"}}
    return write_zoo(out, info, list(range(num_models)), model_splits(num_models, seed, out.name), rows, layout=layout,
                     extra_columns={"source": "string"}, fingerprint={"bench_memory": num_models, "width": width},
                     models_per_shard=16, progress=False)


def rss_anon(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_peak(cmd: list[str], env: dict, limit_bytes: int | None = None) -> dict:
    """Run cmd, sampling its RssAnon every 10 ms: {"peak_bytes", "seconds", "returncode", "killed", "tail"}."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, killed = 0, False
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        value = rss_anon(proc.pid)
        if value is not None:
            peak = max(peak, value)
            if limit_bytes is not None and value > limit_bytes and not killed:
                proc.kill()
                killed = True
        time.sleep(0.01)
    reader.join(timeout=5)
    return {"peak_bytes": peak, "seconds": round(time.perf_counter() - t0, 1), "returncode": proc.returncode,
            "killed": killed, "tail": "".join(out)[-2000:]}


SPEED_CODE = """
import sys, time, torch
torch.set_num_threads(1)
import hyperrep_hf.training.data as d
if sys.argv[5] == "lazy":
    d.IN_MEMORY_SPLIT_BYTES = 0
data = d.ZooData.from_zoos([sys.argv[1]])
B, W, S, aug, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), d.Augmentation(), data.num_rows("train")
def run(i):
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(i))[:B]
    data.training_batch(rows, W, torch.Generator().manual_seed(i), aug)
run(0)
t = time.perf_counter()
for i in range(1, S + 1):
    run(i)
print((time.perf_counter() - t) / S * 1000)
"""


def batch_speed(zoo: Path, batch_size: int, window: int, steps: int, mode: str, env: dict) -> float:
    """ms per training batch of the data pipeline alone, in a fresh process (mode "lazy" or "memory")."""
    out = subprocess.run([sys.executable, "-c", SPEED_CODE, str(zoo), str(batch_size), str(window), str(steps), mode],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the speed run failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.split()[-1])


def train_command(zoo: Path, out: Path, args) -> list[str]:
    return [sys.executable, "-m", "hyperrep_hf.cli", "train", "--zoo", str(zoo), "--output_dir", str(out),
            "--preset", "tiny", "--window_size", str(args.window), "--batch_size", str(args.batch_size),
            "--epochs", "50", "--stop_after_steps", str(args.steps), "--eval_every", "1000", "--report_to", "none", "--progress", "false",
            "--mixed_precision", "no", "--probe_properties", "test_acc", *(["--eval_at_start", "true"] if args.with_eval else [])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100, help="models (rows) of the full zoo; the half zoo has half")
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: full width, 45 MB a row)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--root", help="folder for the zoos (default: a temporary folder under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the zoos")
    parser.add_argument("--eager-ref", help="git revision whose (eager) data pipeline to measure too, on the smallest zoo")
    parser.add_argument("--eager-limit", type=float, default=10.0, help="GB of RssAnon at which the eager run is killed")
    parser.add_argument("--speed", action="store_true", help="also time the data pipeline (lazy, in memory, eager)")
    parser.add_argument("--with-eval", action="store_true",
                        help="also run the evaluation pass (--eval_at_start: every split embedded, probes fitted)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    root = Path(args.root or tempfile.mkdtemp(prefix="bench_memory_", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_DATASETS_CACHE": str(root / "hf_datasets"),
           "TOKENIZERS_PARALLELISM": "false"}
    results, speed = [], []
    try:
        if args.eager_ref:
            old = root / "eager_src"
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.eager_ref, "src"], capture_output=True, check=True)
            old.mkdir()
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        if args.speed:
            sys.path.insert(0, str(ROOT / "tests"))
            from test_training_data_lazy import synthetic_zoo

            for name, arch, kwargs, models, epochs, window in [("CNN-s", "cnn-s", {}, 60, 5, 64),
                                                               ("ResNet-18 width 16", "resnet18", {"width": 16}, 30, 2, 256)]:
                zoo = synthetic_zoo(root / f"speed-{arch}", arch, kwargs, models, epochs=epochs)
                row = {"zoo": f"{name}, {zoo.num_rows('train')} train rows x {zoo.num_weights:,} weights", "window": window}
                modes = [("memory", env), ("lazy", env)] + ([("eager", {**env, "PYTHONPATH": str(old / "src")})] if args.eager_ref else [])
                for mode, mode_env in modes:
                    row[mode] = batch_speed(zoo.path, args.batch_size, window, 10, "lazy" if mode == "lazy" else "memory", mode_env)
                print(f"data pipeline on {row['zoo']}: " + ", ".join(f"{m} {row[m]:.1f} ms" for m, _ in modes), flush=True)
                speed.append(row)
        sizes = [args.models, max(3, args.models // 2)]
        zoos = {}
        for n in sizes:
            t = time.perf_counter()
            zoo = synthetic_resnet_zoo(root / f"resnet18-w{args.width}-{n}", n, args.width)
            data_bytes = sum(f.stat().st_size for f in (zoo.path / "data").glob("*.parquet"))
            weight_bytes = 4 * zoo.num_weights * sum(zoo.num_rows(s) for s in zoo.splits)
            zoos[n] = (zoo, data_bytes, weight_bytes)
            print(f"wrote {zoo.path.name}: {n} rows x {zoo.num_weights:,} weights = {weight_bytes / 1e9:.2f} GB of weights "
                  f"({data_bytes / 1e9:.2f} GB parquet) in {time.perf_counter() - t:.0f} s", flush=True)
        for n in sizes:
            zoo, data_bytes, weight_bytes = zoos[n]
            run = run_peak(train_command(zoo.path, root / f"run-{n}", args), env)
            if run["returncode"] != 0:
                print(run["tail"])
                raise SystemExit(f"hyperrep train failed on {zoo.path.name} (exit {run['returncode']})")
            eager_estimate = 4 * zoo.num_weights * sum(zoo.num_rows(s) for s in zoo.splits)
            results.append({"path": "lazy (this tree)", "rows": n, "zoo_weight_gb": weight_bytes / 1e9,
                            "peak_rss_anon_gb": run["peak_bytes"] / 1e9, "seconds": run["seconds"],
                            "eager_estimate_gb": eager_estimate / 1e9})
        if args.eager_ref:
            n = min(sizes)
            zoo, data_bytes, weight_bytes = zoos[n]
            run = run_peak(train_command(zoo.path, root / f"eager-{n}", args),
                           {**env, "PYTHONPATH": str(old / "src")}, int(args.eager_limit * 1e9))
            if run["returncode"] != 0 and not run["killed"]:
                print(run["tail"])
            results.append({"path": f"eager ({args.eager_ref})", "rows": n, "zoo_weight_gb": weight_bytes / 1e9,
                            "peak_rss_anon_gb": run["peak_bytes"] / 1e9, "seconds": run["seconds"],
                            "killed_at_gb": args.eager_limit if run["killed"] else None,
                            "failed": run["returncode"] != 0 and not run["killed"]})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n`hyperrep train` (tiny SANE, window {args.window}, batch {args.batch_size}, {args.steps} steps) on synthetic "
          f"ResNet-18 (width {args.width}) zoos; peak RssAnon sampled every 10 ms\n")
    print("| path | rows | zoo weights (GB) | peak RssAnon (GB) | eager estimate (GB) | seconds |")
    print("|---|---|---|---|---|---|")
    for r in results:
        peak = f"{r['peak_rss_anon_gb']:.2f}" + (f" (killed at {r['killed_at_gb']} GB)" if r.get("killed_at_gb") else "") \
            + (" (failed)" if r.get("failed") else "")
        est = f"{r['eager_estimate_gb']:.2f}" if "eager_estimate_gb" in r else "-"
        print(f"| {r['path']} | {r['rows']} | {r['zoo_weight_gb']:.2f} | {peak} | {est} | {r['seconds']} |")
    lazy = [r for r in results if r["path"].startswith("lazy")]
    if len(lazy) == 2:
        print(f"\npeak ratio full / half zoo: {lazy[0]['peak_rss_anon_gb'] / lazy[1]['peak_rss_anon_gb']:.2f} "
              f"(zoo size ratio {lazy[0]['zoo_weight_gb'] / lazy[1]['zoo_weight_gb']:.2f})")
    if speed:
        print(f"\nData pipeline alone (ZooData.training_batch, batch {args.batch_size}, one thread), ms per batch\n")
        print("| zoo | window | eager (" + (args.eager_ref or "-") + ") | this tree, in memory | this tree, lazy (parquet) |")
        print("|---|---|---|---|---|")
        for r in speed:
            eager = r.get("eager")
            cells = [f"{r[m]:.1f}" + (f" ({eager / r[m]:.1f}x faster)" if eager else "") for m in ("memory", "lazy")]
            print(f"| {r['zoo']} | {r['window']} | {f'{eager:.1f}' if eager else '-'} | {cells[0]} | {cells[1]} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "speed": speed, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
