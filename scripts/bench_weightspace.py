"""Benchmark of the weight-space operations against straightforward per-model implementations.

    python scripts/bench_weightspace.py [--models 2000] [--json PATH]

Rows: random permutation of a CNN-s zoo batch [M, P] (one gather vs a per-model state_dict loop),
s(W) statistics of the batch (vectorised vs per-model numpy), one ResNet-18 permutation, and
alignment of a permuted ResNet-18 back to its original. Baselines run in the same process; timings
on a shared machine are noisy, compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from hyperrep_hf import WeightLayout
from hyperrep_hf.weightspace import (
    align,
    permutation_spec,
    permute_flat,
    random_permutation,
    weight_statistics,
)
from hyperrep_hf.zoo import build_model


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def permute_per_model(flat, layout, spec, perms):
    """Baseline: unflatten each model, index_select every permuted axis, flatten again."""
    by_entry = spec.axes_by_entry()
    out = []
    for i in range(flat.shape[0]):
        sd = layout.unflatten(flat[i])
        for name, axes in by_entry.items():
            t = sd[name]
            for axis, group, block in axes:
                p = perms[group][i]
                t = t.index_select(axis, (p[:, None] * block + torch.arange(block)).reshape(-1))
            sd[name] = t
        out.append(layout.flatten(sd))
    return torch.stack(out)


def statistics_per_model(flat, layout):
    """Baseline: numpy statistics model by model, entry by entry."""
    rows = []
    for row in flat.numpy():
        feats = []
        for e, o in zip(layout.entries, layout.offsets):
            w = row[o : o + e.numel].astype(np.float64)
            feats += [w.mean(), w.var(), *np.percentile(w, [1, 25, 50, 75, 99])]
        rows.append(feats)
    return np.asarray(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=2000, help="CNN-s models in the zoo batch")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice); 1 is steadier on a loaded machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = build_model("cnn-s")
    layout = WeightLayout.from_state_dict(model.state_dict())
    spec = permutation_spec(model)
    flat = torch.randn(args.models, layout.num_weights)
    perms = spec.random(args.models, torch.Generator().manual_seed(0))
    assert torch.equal(permute_flat(flat, layout, spec, perms), permute_per_model(flat, layout, spec, perms))
    np.testing.assert_allclose(weight_statistics(flat[:50], layout)[0].numpy(), statistics_per_model(flat[:50], layout), rtol=1e-4, atol=1e-6)

    rows = []
    t_gather = best_of(lambda: permute_flat(flat, layout, spec, perms))
    t_loop = best_of(lambda: permute_per_model(flat, layout, spec, perms), 1)
    rows.append(("random permutation, CNN-s zoo batch", "per-model state_dict loop", t_gather, t_loop))
    t_stats = best_of(lambda: weight_statistics(flat, layout))
    t_stats_np = best_of(lambda: statistics_per_model(flat, layout), 1)
    rows.append(("s(W) statistics, CNN-s zoo batch", "per-model numpy loop", t_stats, t_stats_np))

    resnet = build_model("resnet18").eval()
    r_layout = WeightLayout.from_state_dict(resnet.state_dict())
    r_spec = permutation_spec(resnet)
    r_flat = r_layout.flatten(resnet.state_dict())
    r_perms = r_spec.random(generator=torch.Generator().manual_seed(0))
    t_r = best_of(lambda: permute_flat(r_flat, r_layout, r_spec, r_perms))
    t_r_loop = best_of(lambda: permute_per_model(r_flat[None], r_layout, r_spec, {k: v[None] for k, v in r_perms.items()}))
    rows.append(("random permutation, one ResNet-18", "state_dict index_select", t_r, t_r_loop))
    shuffled = random_permutation(resnet, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    aligned, _ = align(shuffled, resnet)
    t_align = time.perf_counter() - start
    exact = all(torch.equal(aligned.state_dict()[k], v) for k, v in resnet.state_dict().items())
    rows.append(("align a permuted ResNet-18 back" + (" (exact)" if exact else " (NOT exact)"), "-", t_align, None))

    print(f"CNN-s zoo batch: {args.models} models x {layout.num_weights} weights; ResNet-18: {r_layout.num_weights} weights; torch threads {torch.get_num_threads()}")
    print(f"{'operation':<48} {'ours (s)':>10} {'baseline':<28} {'baseline (s)':>12} {'speed-up':>9}")
    results = []
    for op, base, ours, baseline in rows:
        ratio = None if baseline is None else baseline / ours
        shown = ("-", "-") if baseline is None else (f"{baseline:.4f}", f"{ratio:.1f}x")
        print(f"{op:<48} {ours:>10.4f} {base:<28} {shown[0]:>12} {shown[1]:>9}")
        results.append({"operation": op, "seconds": ours, "baseline": base, "baseline_seconds": baseline, "speedup": ratio})
    print(f"s(W): {args.models / t_stats:,.0f} models/s; zoo permutation: {args.models / t_gather:,.0f} models/s")
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"models": args.models, "threads": torch.get_num_threads(), "results": results}, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
