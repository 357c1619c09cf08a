"""Benchmark: SANE training throughput on a zoo, and the share of step time spent waiting for data.

    python scripts/bench_training.py                         # builds a small digits zoo in a temp folder
    python scripts/bench_training.py --zoo zoos/mnist-seed --steps 40 --json bench.json

Variants, measured in the same run on the same zoo and model (tiny preset unless --preset):
    step, fixed batch   forward + backward + AdamW on one prepared two-view batch (the baseline:
                        compute only, no data pipeline)
    data only           the data pipeline alone: rows -> permuted views -> tokens -> window -> noise
    training loop       SaneTrainer for --steps optimizer steps (data + compute, as in a real run;
                        its data share is the time the loop waits for data), with batches built in
                        the loop ("no prefetch") and in a background thread ("prefetch 2", the default)
Ratios are against the baseline. Samples are models (two views each); tokens are real window tokens
of both views. On a GPU the model runs in bf16, as the trainer would.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", help="zoo folder or Hub id (default: build a 20-model digits zoo in a temp folder)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hyperrep_hf import SaneModel
    from hyperrep_hf.training import Augmentation, SaneTrainingArguments, ZooData, train_sane
    from hyperrep_hf.training.trainer import SaneTrainer, epoch_batches

    tmp = tempfile.TemporaryDirectory()
    zoo = args.zoo
    if zoo is None:
        from hyperrep_hf.zoo import build_zoo

        zoo = str(Path(tmp.name) / "digits")
        build_zoo("digits-seed", zoo, num_models=20, epochs=4, progress=False)

    def loop_args(name: str, prefetch: int) -> SaneTrainingArguments:
        return SaneTrainingArguments(zoo=[zoo], output_dir=str(Path(tmp.name) / name), preset=args.preset,
                                     batch_size=args.batch_size, epochs=1000, stop_after_steps=args.steps + 2,
                                     logging_steps=1, eval_every=10**6, save_every=10**6, progress=False,
                                     report_to=["none"], prefetch_batches=prefetch)

    targs = loop_args("loop", 2)
    data = ZooData.from_zoos([zoo], token_size=targs.token_size)
    trainer = SaneTrainer(targs)
    config = trainer._model_config(data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SaneModel(config).to(device)
    model.set_layer_sigma(data.token_statistics())
    optimizer = trainer._optimizer(model)
    aug = Augmentation()
    rows = epoch_batches(data.num_rows("train"), args.batch_size, 0, 0)
    gen = torch.Generator().manual_seed(0)
    fixed = data.training_batch(rows[0], config.window_size, gen, aug).to(device)
    samples, tokens = len(rows[0]), fixed.num_tokens
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            loss = model(**fixed.model_inputs(), num_views=2).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counter = iter(range(10**9))

    def data_only():
        data.training_batch(rows[next(counter) % len(rows)], config.window_size, gen, aug).to(device)

    t_step = timed(step, args.steps)
    t_data = timed(data_only, args.steps)
    def run_loop(loop: SaneTrainingArguments):
        lines = train_sane(loop).train_history[2:]  # the first two steps warm up
        seconds = sum(m["seconds_per_step"] for m in lines)
        return (seconds / len(lines), sum(m["samples_per_s"] * m["seconds_per_step"] for m in lines) / seconds,
                sum(m["tokens_per_s"] * m["seconds_per_step"] for m in lines) / seconds,
                sum(m["data_seconds_per_step"] for m in lines) / seconds)

    loop_sync = run_loop(loop_args("sync", 0))
    loop_prefetch = run_loop(targs)
    table = [
        ("step, fixed batch (baseline)", t_step, samples / t_step, tokens / t_step, None),
        ("data only", t_data, samples / t_data, tokens / t_data, None),
        ("training loop, no prefetch", *loop_sync),
        ("training loop, prefetch 2", *loop_prefetch),
    ]
    print(f"SANE {args.preset} (d_model {config.d_model}, {config.num_layers} layers), token size {config.token_size}, "
          f"window {config.window_size}, batch {samples} models x 2 views, {tokens} tokens/step, {device}, "
          f"{torch.get_num_threads()} threads, zoo {zoo} ({data.num_rows('train')} train rows)")
    print(f"{'variant':<30} {'ms/step':>9} {'samples/s':>10} {'tokens/s':>10} {'vs baseline':>12} {'data share':>11}")
    for name, t, sps, tps, share in table:
        print(f"{name:<30} {1000 * t:>9.1f} {sps:>10.1f} {tps:>10.0f} {t_step / t:>11.2f}x "
              f"{'' if share is None else f'{100 * share:.1f}%':>11}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "preset": args.preset, "device": str(device), "threads": torch.get_num_threads(), "zoo": zoo,
            "batch_models": samples, "tokens_per_step": tokens,
            "variants": [{"name": n, "seconds_per_step": t, "samples_per_s": s, "tokens_per_s": k,
                          "ratio_to_baseline": t_step / t, "data_share": d} for n, t, s, k, d in table]}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
