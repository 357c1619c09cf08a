"""Benchmark: the weight tokenizer against a straightforward per-layer implementation, same run.

    python scripts/bench_tokenizer.py [--passes 7] [--zoo-size 2000] [--json PATH]

1. ResNet-18 (BatchNorm tokens included) at token size 288 (53,524 tokens): tokenize + decode.
2. A zoo of CNN-s models as flat rows [M, 2464]: WeightTokenizer.tokenize_flat + decode_flat in one
   batch vs the baseline looped over the models.
The baseline is written the reference way: per layer, torch.cat of padded chunks, and a Python loop
over channels and chunks that builds the (n, l, k) positions as Python lists. Medians of `--passes`.
Large fresh buffers cost page faults on CPU; with THP_MEM_ALLOC_ENABLE=1 in the environment torch
backs them with huge pages, which helps both implementations (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import hyperrep_hf  # noqa: F401  isort: skip  (first: its allocator default applies only before torch loads)
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hyperrep_hf.layout import WeightLayout
from hyperrep_hf.tokenization_weights import WeightTokenizer, layers_from_state_dict
from hyperrep_hf.zoo import build_model


# ---- the baseline, the reference way ----
def baseline_tokenize(state_dict, token_size):
    """state_dict -> tokens [N, T], positions [N, 3], mask [N, T]: per-layer chunks, positions in lists."""
    layers = layers_from_state_dict(WeightLayout.from_state_dict(state_dict))
    tokens, masks, positions, n = [], [], [], 0
    for layer, spec in enumerate(layers):
        w = state_dict[spec.weight]
        rows = w.reshape(w.shape[0] if w.dim() else 1, -1).float()
        if spec.bias:
            rows = torch.cat([rows, state_dict[spec.bias].float().unsqueeze(1)], dim=1)
        n_chunks = -(-rows.shape[1] // token_size)
        pad = n_chunks * token_size - rows.shape[1]
        tokens.append(F.pad(rows, (0, pad)).view(-1, token_size))
        masks.append(F.pad(torch.ones_like(rows, dtype=torch.bool), (0, pad)).view(-1, token_size))
        for k in range(rows.shape[0]):
            for _ in range(n_chunks):
                positions.append([n, layer, k])
                n += 1
    return torch.cat(tokens), torch.tensor(positions), torch.cat(masks)


def baseline_decode(tokens, positions, reference_shapes):
    """tokens [N, T] -> state_dict, walking the layers in order (reference_shapes: name -> (shape, dtype))."""
    layout = WeightLayout([(name, shape, dtype) for name, (shape, dtype) in reference_shapes.items()])
    out, n = {}, 0
    for spec in layers_from_state_dict(layout):
        shape, dtype = reference_shapes[spec.weight]
        c_out = shape[0] if shape else 1
        rest = max(1, torch.Size(shape).numel() // c_out)
        length = rest + (spec.bias is not None)
        n_chunks = -(-length // tokens.shape[1])
        rows = tokens[n:n + c_out * n_chunks].reshape(c_out, -1)[:, :length]
        out[spec.weight] = rows[:, :rest].reshape(shape).to(getattr(torch, dtype)).clone()
        if spec.bias:
            out[spec.bias] = rows[:, rest].to(getattr(torch, reference_shapes[spec.bias][1])).clone()
        n += c_out * n_chunks
    return out


def median_ms(fn, passes):
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--zoo-size", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"torch_threads": torch.get_num_threads(), "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "")}

    # 1. ResNet-18 with BatchNorm, token size 288
    sd = build_model("resnet18").state_dict()
    shapes = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items() if v.is_floating_point()}
    tok = WeightTokenizer(token_size=288)
    enc = tok(sd)  # first call builds the layout (once per architecture)
    b_tokens, b_pos, _ = baseline_tokenize(sd, 288)
    assert torch.equal(b_tokens, enc["tokens"][0]) and torch.equal(b_pos, enc["positions"][0]), "baseline disagrees"
    assert all(torch.equal(tok.decode(enc)[0][k], sd[k]) for k in shapes)
    rows = []
    steps = [("resnet18 tokenize", lambda: baseline_tokenize(sd, 288), lambda: tok(sd)),
             ("resnet18 decode", lambda: baseline_decode(b_tokens, b_pos, shapes), lambda: tok.decode(enc))]
    for name, base_fn, ours_fn in tqdm(steps, desc="resnet18"):
        rows.append((name, median_ms(base_fn, args.passes), median_ms(ours_fn, args.passes)))
    rows.append(("resnet18 tokenize+decode", rows[0][1] + rows[1][1], rows[0][2] + rows[1][2]))
    results["resnet18_num_tokens"] = enc["tokens"].shape[1]

    # 2. Zoo batch: M CNN-s models as flat rows
    model = build_model("cnn-s")
    ztok = WeightTokenizer()
    ztok(model)
    layout = ztok.layouts[0].weights
    flat = torch.randn(args.zoo_size, layout.num_weights)
    zshapes = {e.name: (e.shape, e.dtype) for e in layout.entries}

    def baseline_zoo():
        for row in flat:
            t, p, _ = baseline_tokenize(layout.unflatten(row), ztok.token_size)
            baseline_decode(t, p, zshapes)

    def ours_zoo():
        ztok.decode_flat(ztok.tokenize_flat(flat)["tokens"])

    assert torch.equal(ztok.decode_flat(ztok.tokenize_flat(flat)["tokens"]), flat)
    zoo_passes = max(1, args.passes // 3)
    base_ms = median_ms(baseline_zoo, zoo_passes)
    ours_ms = median_ms(ours_zoo, args.passes)
    rows.append((f"cnn-s zoo x{args.zoo_size} tokenize+decode", base_ms, ours_ms))
    results["zoo_models_per_s"] = {"baseline": 1e3 * args.zoo_size / base_ms, "ours": 1e3 * args.zoo_size / ours_ms}

    print(f"\nthreads={results['torch_threads']} THP_MEM_ALLOC_ENABLE={results['THP_MEM_ALLOC_ENABLE'] or '-'}, "
          f"medians of {args.passes} passes (zoo baseline: {zoo_passes})")
    print(f"| {'step':40s} | {'baseline ms':>11s} | {'ours ms':>8s} | {'speed-up':>8s} |")
    print(f"|{'-' * 42}|{'-' * 13}|{'-' * 10}|{'-' * 10}|")
    for name, b, o in rows:
        print(f"| {name:40s} | {b:11.1f} | {o:8.1f} | {b / o:7.1f}x |")
    zr = results["zoo_models_per_s"]
    print(f"zoo: {zr['ours']:,.0f} models/s tokenize+decode (baseline loop {zr['baseline']:,.0f} models/s)")
    results["rows"] = [{"step": n, "baseline_ms": b, "ours_ms": o, "speedup": b / o} for n, b, o in rows]
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)
    return results


if __name__ == "__main__":
    main()
