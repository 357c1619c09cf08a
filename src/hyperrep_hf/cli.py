"""The `hyperrep` command. Each sub-command lives in hyperrep_hf.commands.<name> and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per sub-command group; each defines register(subparsers) and sets args.func.
COMMANDS: tuple[str, ...] = ("demo", "zoo", "tokenize", "train", "finetune", "embed", "probe", "sample", "push")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperrep", description="Hyper-representations of neural network weights.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hyperrep_hf.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as err:
        # Bad input, a missing file, a Hub error (no such repo or revision, no access; huggingface_hub's
        # errors are OSErrors naming the repo): a clear message, not a traceback.
        print(f"hyperrep {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
