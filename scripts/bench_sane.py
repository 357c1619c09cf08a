"""Benchmark: SaneModel training-step and embedding throughput against a plain nanoGPT-style
encoder-decoder of the same size, measured in the same run.

    python scripts/bench_sane.py                 # the RESULTS.md setting: d 256, 4 layers, 4 heads,
                                                 # batch 8 x window 256, token 289, latent 128
    python scripts/bench_sane.py --quick         # tiny sizes, a smoke test (seconds)
    python scripts/bench_sane.py --variants sane,sane-bf16,sane-compile --threads 1 --json out.json

Throughput: all variants are built in one process and take turns every round (median over rounds),
so load from other processes on a shared machine hits them alike. Peak RSS (VmHWM): a fresh
process per variant, all started together after the timing. Throughput counts window tokens:
batch x window per step (the two contrastive views of a step count once, as in RESULTS.md).
Variants:

    baseline        plain nanoGPT-style encoder/decoder (fused QKV + SDPA), fp32, eager
    baseline-bf16   the same baseline under torch.autocast(bfloat16)
    sane            hyperrep_hf.SaneModel, fp32, eager
    sane-bf16       SaneModel under torch.autocast(bfloat16) (CPU: needs avx512_bf16/AMX to pay off),
                    what `hyperrep train` runs by default where the hardware has native bf16
    sane-compile    SaneModel wrapped in torch.compile (compile time reported separately)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from tqdm import tqdm

SETTINGS = {
    "full": dict(d_model=256, num_layers=4, num_heads=4, batch=8, window=256, token_size=289, latent_dim=128),
    "quick": dict(d_model=64, num_layers=2, num_heads=2, batch=4, window=32, token_size=33, latent_dim=16),
}
VARIANTS = ("baseline", "baseline-bf16", "sane", "sane-bf16", "sane-compile")
DEVICE = "cpu"  # set from --device
# torch.compile takes minutes on 2 CPU cores: measured on request only.
DEFAULT_VARIANTS = ("baseline", "baseline-bf16", "sane", "sane-bf16")
# RESULTS.md reference figures (their machine) and this project's goal of 1.5x them.
REFERENCE = {"train_tokens_per_s": (2300, 2500), "embed_tokens_per_s": (30000, 35000), "peak_rss_gb": 1.4}


# --------------------------------------------------------------------------- the plain baseline


def build_baseline(s: dict):
    """A textbook nanoGPT-style encoder-decoder of the same size as SaneModel (same losses)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h = h
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (t.view(b, n, self.h, d // self.h).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, n, d))
            return x + self.mlp(self.ln_2(x))

    class Stack(nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            d, half = s["d_model"], s["d_model"] // 2
            self.wte = nn.Linear(d_in, d)
            self.pe_n, self.pe_l, self.pe_k = nn.Embedding(s["window"], half), nn.Embedding(32, half), nn.Embedding(512, half)
            self.blocks = nn.ModuleList(Block(d, s["num_heads"]) for _ in range(s["num_layers"]))
            self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, d_out)

        def forward(self, x, pos):
            pe = torch.cat([self.pe_n(pos[..., 0]) + self.pe_l(pos[..., 1]), self.pe_k(pos[..., 2])], -1)
            x = self.wte(x) + pe
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            t, z, p = s["token_size"], s["latent_dim"], 30
            self.encoder, self.decoder = Stack(t, z), Stack(z, t)
            self.proj = nn.Sequential(nn.Linear(s["window"] * z, p), nn.LayerNorm(p), nn.ReLU(), nn.Linear(p, p), nn.LayerNorm(p), nn.ReLU())

        def loss(self, tokens, pos):
            from hyperrep_hf.losses import nt_xent

            z = self.encoder(tokens, pos)
            rec = self.decoder(z, pos)
            proj = self.proj(z.flatten(1))
            half = tokens.shape[0] // 2
            return 0.05 * nt_xent(proj[:half], proj[half:], 0.1) + 0.95 * F.mse_loss(rec, tokens)

        def embed(self, tokens, pos):
            return self.encoder(tokens, pos).mean(1)

    return EncoderDecoder()


# --------------------------------------------------------------------------- one variant


def build_variant(variant: str, s: dict):
    """-> (train_step, embed): callables doing one training step (two views, forward + backward +
    AdamW) and one embedding of batch x window tokens (eval, no grad)."""
    import torch

    torch.manual_seed(0)
    b, n, t = s["batch"], s["window"], s["token_size"]
    tokens = torch.randn(2 * b, n, t, device=DEVICE)  # two views of b models
    idx = torch.arange(n, device=DEVICE)
    positions = torch.stack([idx, idx * 8 // n, idx % 64], -1).expand(2 * b, n, 3).contiguous()
    mask = torch.ones(2 * b, n, dtype=torch.long, device=DEVICE)

    if variant.startswith("baseline"):
        model = build_baseline(s).to(DEVICE)

        def train_loss():
            return model.loss(tokens, positions)

        def embed_batch():
            return model.embed(tokens[:b], positions[:b])
    else:
        from hyperrep_hf import SaneConfig, SaneModel

        config = SaneConfig(
            token_size=t, d_model=s["d_model"], num_layers=s["num_layers"], num_heads=s["num_heads"],
            latent_dim=s["latent_dim"], window_size=n, max_positions=(max(n, 1024), 32, 512),
        )
        model = SaneModel(config).to(DEVICE)
        forward = torch.compile(model) if variant == "sane-compile" else model

        def train_loss():
            return forward(tokens, positions, mask, targets=tokens, num_views=2).loss

        def embed_batch():
            if variant == "sane-compile":
                return forward(tokens[:b], positions[:b], mask[:b]).latents.mean(1)
            return model.embed(tokens[:b], positions[:b], mask[:b])

    def autocast():
        if variant.endswith("-bf16"):
            return torch.autocast(DEVICE.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=3e-9)

    def train_step():
        model.train()
        with autocast():
            loss = train_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def embed():
        model.eval()
        with torch.inference_mode(), autocast():
            embed_batch()

    return train_step, embed


def seconds(fn, repeat: int) -> float:
    import torch

    sync = torch.cuda.synchronize if DEVICE.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - start) / repeat


def time_variants(variants: list[str], s: dict, rounds: int, steps: int, threads: int | None) -> dict:
    """Median seconds per train step / per embedding batch; the variants take turns every round,
    so load from other processes on a shared machine hits them alike."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    built, first_step = {}, {}
    for variant in variants:
        train_step, embed = built[variant] = build_variant(variant, s)
        first_step[variant] = seconds(train_step, 1)  # includes compilation for sane-compile
        embed()
    times = {v: {"train": [], "embed": []} for v in variants}
    for _ in tqdm(range(rounds), desc="timing rounds"):
        for variant in variants:
            train_step, embed = built[variant]
            times[variant]["train"].append(seconds(train_step, steps))
            times[variant]["embed"].append(seconds(embed, 2 * steps))
    b, n = s["batch"], s["window"]
    return {
        v: {
            "train_tokens_per_s": b * n / statistics.median(times[v]["train"]),
            "embed_tokens_per_s": b * n / statistics.median(times[v]["embed"]),
            "embed_models_per_s": b / statistics.median(times[v]["embed"]),
            "first_step_s": first_step[v],
            "threads": torch.get_num_threads(),
        }
        for v in variants
    }


def peak_rss_gb(variant: str, s: dict, threads: int | None) -> float:
    """Peak RSS (GB; on a GPU: peak memory allocated) of a fresh process doing two training steps and two embeddings with this variant."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    train_step, embed = build_variant(variant, s)
    for _ in range(2):
        train_step()
        embed()
    if DEVICE.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024**3
    # VmHWM is this process's own peak; ru_maxrss can carry the (larger) parent's across fork+exec.
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# --------------------------------------------------------------------------- driver


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {VARIANTS}")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (median taken)")
    parser.add_argument("--steps", type=int, default=1, help="training steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU, 'peak RSS' is peak GPU memory allocated)")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setting = "quick" if args.quick else "full"
    s = SETTINGS[setting]
    global DEVICE
    DEVICE = args.device
    if args.rss_child:
        print(json.dumps({"peak_rss_gb": peak_rss_gb(args.rss_child, s, args.threads)}))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    variants = ["baseline"] + [v for v in variants if v != "baseline"]
    from hyperrep_hf.precision import auto_mixed_precision

    if auto_mixed_precision(DEVICE) != "bf16":  # emulated bf16 is orders of magnitude slower: not worth timing
        skipped = [v for v in variants if v.endswith("-bf16")]
        if skipped:
            print(f"skipped {', '.join(skipped)}: {DEVICE} has no native bf16 (a CPU needs AVX512-BF16 or AMX); "
                  "training runs in fp32 here (mixed_precision='auto')")
        variants = [v for v in variants if v not in skipped]
    rounds = args.rounds or 3
    results = time_variants(variants, s, rounds, args.steps, args.threads)
    # one fresh process per variant, all at once after the timing: a process's own peak does not
    # depend on what else runs, and the interpreter starts (seconds each) overlap
    children = {}
    for variant in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", variant, "--device", DEVICE]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        children[variant] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for variant, child in children.items():
        stdout, stderr = child.communicate()
        if child.returncode:
            print(f"{variant} failed:\n{stderr[-3000:]}", file=sys.stderr)
            return 1
        results[variant].update(json.loads(stdout.strip().splitlines()[-1]))

    base = results["baseline"]
    print(
        f"\nSANE benchmark ({setting}: {s}), fp32 weights, median of {rounds} rounds x {args.steps} steps, "
        f"threads {base['threads']}, device {DEVICE}"
    )
    print(f"{'variant':<14}{'train tok/s':>12}{'x base':>8}{'embed tok/s':>13}{'x base':>8}{'models/s':>10}{'peak RSS GB':>13}{'1st step s':>12}")
    for variant in variants:
        r = results[variant]
        print(
            f"{variant:<14}{r['train_tokens_per_s']:>12,.0f}{r['train_tokens_per_s'] / base['train_tokens_per_s']:>8.2f}"
            f"{r['embed_tokens_per_s']:>13,.0f}{r['embed_tokens_per_s'] / base['embed_tokens_per_s']:>8.2f}"
            f"{r['embed_models_per_s']:>10,.1f}{r['peak_rss_gb']:>13.2f}{r['first_step_s']:>12.1f}"
        )
    if setting == "full":
        train, embed = REFERENCE["train_tokens_per_s"], REFERENCE["embed_tokens_per_s"]
        print(
            f"RESULTS.md reference (another machine): train {train[0]:,}-{train[1]:,}, embed {embed[0]:,}-{embed[1]:,} "
            f"tok/s, peak RSS <= {REFERENCE['peak_rss_gb']} GB; goal 1.5x: train >= {1.5 * train[0]:,.0f}, "
            f"embed >= {1.5 * embed[0]:,.0f} tok/s."
        )
    if args.json:
        payload = {"device": DEVICE, "setting": s, "rounds": rounds, "steps": args.steps, "results": results, "reference": REFERENCE}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
