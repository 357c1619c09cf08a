"""Benchmark: embedding pipelines and the closed-form probe path, each against its baseline in the same run.

    python scripts/bench_pipelines.py [--models 256] [--arch cnn-s] [--json out.json]

1. Embedding M models: pipeline one model per call (baseline) vs pipeline batch_size=32 vs a zoo
   split (datasets.Dataset, read in slices) vs embed_flat on a weight matrix (also averaged over 8
   neuron permutations, as the probes embed by default).
2. Ridge probe over the 17-penalty grid: one eigendecomposition of the Gram matrix for the whole
   path (ridge_path) vs 17 separate normal-equation solves (baseline), on flat weights [M, P].

The weights are freshly initialised models of the architecture (throughput does not depend on
training); the SANE model is the "tiny" preset with random weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def _time(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=256, help="models to embed (default 256)")
    parser.add_argument("--arch", default="cnn-s", help="architecture of the models (default cnn-s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import datasets
    from transformers import pipeline

    from hyperrep_hf import SaneConfig, SaneModel, WeightLayout, WeightTokenizer
    from hyperrep_hf.downstream.embedding import embed_flat
    from hyperrep_hf.downstream.probes import PENALTIES, ridge_path
    from hyperrep_hf.weightspace import permutation_spec
    from hyperrep_hf.zoo import build_model

    torch.manual_seed(0)
    models = [build_model(args.arch) for _ in range(args.models)]
    layout = WeightLayout.from_state_dict(models[0].state_dict())
    flat = layout.flatten_many([m.state_dict() for m in models])
    tok = WeightTokenizer()
    tok.layout_of(models[0])
    tok.fit_standardization(flat)
    tok.set_permutation_spec(permutation_spec(models[0]))
    sane = SaneModel(SaneConfig.from_preset("tiny", token_size=tok.token_size)).eval()
    folder = tempfile.mkdtemp(prefix="bench-pipelines-")
    sane.save_pretrained(folder)
    tok.save_pretrained(folder)
    pipe = pipeline("weight-embedding", model=folder)
    ds = datasets.Dataset.from_dict({"weights": flat.numpy()},
                                    features=datasets.Features({"weights": datasets.List(datasets.Value("float32"), length=layout.num_weights)}))
    n_tokens = tok.layouts[0].num_tokens

    results = []
    base = _time(lambda: [pipe(m) for m in models])
    rows = [
        ("pipeline, one model per call (baseline)", base),
        ("pipeline, list with batch_size=32", _time(lambda: pipe(models, batch_size=32))),
        ("pipeline, zoo split (Dataset, slices of 64)", _time(lambda: pipe(ds, batch_size=64))),
        ("embed_flat on weights [M, P]", _time(lambda: embed_flat(sane, tok, flat, batch_size=64))),
        ("embed_flat, averaged over 8 permutations (the probes' default)",
         _time(lambda: embed_flat(sane, tok, flat, batch_size=64, permutations=8))),
    ]
    print(f"\nEmbedding {args.models} {args.arch} models ({n_tokens} tokens each), SANE tiny, torch threads {torch.get_num_threads()}")
    print("| method | seconds | models/s | speed-up |\n|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} | {args.models / sec:.0f} | {base / sec:.1f}x |")
        results.append({"benchmark": "embedding", "method": name, "seconds": sec, "models_per_s": args.models / sec, "speedup": base / sec})

    x = flat.double()
    y = torch.randn(len(x), 1, dtype=torch.float64)

    def separate_solves():
        xc, yc = x - x.mean(0), y - y.mean(0)
        gram, rhs = xc.T @ xc, xc.T @ yc
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        return [torch.linalg.solve(gram + p * eye, rhs) for p in PENALTIES]

    check = torch.stack(separate_solves())
    coefs, _ = ridge_path(x, y)
    agree = float((coefs - check).abs().max())
    base = _time(separate_solves)
    svd = _time(lambda: ridge_path(x, y))
    print(f"\nRidge path, {len(PENALTIES)} penalties, features [{x.shape[0]}, {x.shape[1]}] (max coefficient difference {agree:.1e})")
    print("| method | seconds | speed-up |\n|---|---|---|")
    for name, sec in (("17 normal-equation solves (baseline)", base), ("one eigendecomposition for the path (ridge_path)", svd)):
        print(f"| {name} | {sec:.3f} | {base / sec:.1f}x |")
        results.append({"benchmark": "ridge_path", "method": name, "seconds": sec, "speedup": base / sec, "max_difference": agree})

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"models": args.models, "arch": args.arch, "threads": torch.get_num_threads(),
                       "numpy": np.__version__, "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
