"""`hyperrep tokenize`: tokenize a registry architecture, check the exact round trip, optionally save."""

from __future__ import annotations

import argparse

import torch


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize",
        help="tokenize a model of a registered architecture and check the decode round trip",
        description="Build a registered architecture (e.g. cnn-s, resnet18), tokenize its weights into SANE "
        "tokens, print the token counts and position ranges, check that decoding gives the weights back "
        "bit-exactly and optionally save the tokenizer (preprocessor_config.json).",
    )
    p.add_argument("--arch", default="cnn-s", help="registered architecture name (default: cnn-s)")
    p.add_argument("--token-size", default="auto", help="values per token, or 'auto' (default)")
    p.add_argument("--max-token-size", type=int, default=288, help="cap for --token-size auto (default 288)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation")
    p.add_argument("--out", default=None, help="folder to save the tokenizer in")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tokenization_weights import WeightTokenizer
    from ..zoo import build_model

    token_size = args.token_size if args.token_size == "auto" else _int(args.token_size)
    torch.manual_seed(args.seed)
    model = build_model(args.arch)
    tok = WeightTokenizer(token_size=token_size, max_token_size=args.max_token_size)
    enc = tok(model)
    _, n_tokens, size = enc["tokens"].shape
    pos = enc["positions"][0]
    real = int(enc["value_mask"][0].sum())
    print(f"architecture {args.arch}: {real:,} weights -> {n_tokens:,} tokens of size {size} "
          f"({100 * real / (n_tokens * size):.1f}% real values)")
    print(f"positions: n 0..{int(pos[:, 0].max())}, layer l 0..{int(pos[:, 1].max())}, "
          f"channel k 0..{int(pos[:, 2].max())}")
    decoded = tok.decode(enc)[0]
    expected = model.state_dict()
    bad = [k for k, v in expected.items() if not torch.equal(decoded[k], v)]
    if bad:
        print(f"round trip FAILED for {bad}")
        return 1
    model.load_state_dict(decoded, strict=True)
    print(f"round trip: exact ({len(expected)} state_dict entries, load_state_dict(strict=True) ok)")
    if args.out:
        tok.save_pretrained(args.out)
        print(f"tokenizer saved to {args.out}/preprocessor_config.json")
    return 0


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--token-size must be an integer or 'auto', got {text!r}") from None
