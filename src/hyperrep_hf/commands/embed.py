"""`hyperrep embed`: embed models (zoo rows or .safetensors files) with a SANE checkpoint."""

from __future__ import annotations

import argparse

from ..modeling_sane import POOLINGS
from . import add_checkpoint_arguments, add_device_argument, open_pipeline, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed models with a SANE checkpoint (one vector per model)",
        description="Embed the models of a zoo split or of .safetensors state_dict files with a trained SANE "
        "checkpoint (the weight-embedding pipeline) and write the embeddings to a .safetensors file.",
    )
    add_checkpoint_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--zoo", help="zoo folder or Hub dataset id: embed every row of --split")
    src.add_argument("--models", nargs="+", metavar="FILE", help=".safetensors state_dict files to embed")
    p.add_argument("--split", default="test", help="zoo split (default: test)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="mean of token latents (default), per-layer means, or all of them")
    p.add_argument("--permutations", type=int, default=0,
                   help="average each mean or layer embedding over K function-preserving neuron permutations (default 0)")
    p.add_argument("--window-size", type=int, default=None, help="tokens per window (default: the checkpoint's)")
    p.add_argument("--halo", type=int, default=None, help="context tokens each side of a window (default: window/4)")
    p.add_argument("--batch-size", type=int, default=64, help="models per forward pass (default 64)")
    add_device_argument(p, "the SANE model")
    p.add_argument("--out", required=True, help="output .safetensors file ('embeddings' [models, ...])")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save

    from ..files import atomic_write_bytes

    pipe = open_pipeline("weight-embedding", args, device=resolve_device(args.device))
    options = {"pooling": args.pooling, "window_size": args.window_size, "halo": args.halo, "batch_size": args.batch_size,
               "permutations": args.permutations}
    tensors = {}
    if args.zoo:
        from ..zoo import load_zoo

        zoo = load_zoo(args.zoo)
        if args.split not in zoo.dataset:
            raise ValueError(f"the zoo has no split {args.split!r}; splits: {list(zoo.dataset)}")
        embeddings = pipe(zoo.dataset[args.split], **options)
        meta = zoo.metadata(args.split, ["model_id", "epoch"])
        keep = [bool(torch.isfinite(e).all()) for e in embeddings]  # diverged checkpoints embed as NaN
        if not all(keep):
            print(f"left out {keep.count(False)} of {len(keep)} rows of {args.split!r}: non-finite weights (diverged checkpoints)")
        embeddings, meta = [e for e, k in zip(embeddings, keep) if k], meta[keep]
        if not embeddings:
            raise ValueError(f"every row of split {args.split!r} holds non-finite weights; nothing to embed")
        tensors["model_id"] = torch.tensor(meta["model_id"].to_numpy())
        tensors["epoch"] = torch.tensor(meta["epoch"].to_numpy())
    else:
        embeddings = pipe(list(args.models), **options)
    shapes = {tuple(e.shape) for e in embeddings}
    if len(shapes) != 1:
        raise ValueError(f"the models' embeddings differ in shape {sorted(shapes)} (models of different architectures); use --pooling mean")
    tensors["embeddings"] = torch.stack(embeddings).contiguous()
    atomic_write_bytes(args.out, save(tensors))
    print(f"{len(embeddings)} embeddings of shape {list(shapes.pop())} written to {args.out}")
    return 0
