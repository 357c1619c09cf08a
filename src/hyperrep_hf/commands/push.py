"""`hyperrep push CHECKPOINT org/name`: share a checkpoint folder on the Hub whole, in one commit."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload a SANE checkpoint folder to the Hub (model, code, tokenizer, probes, anchors, card)",
        description="Upload everything a checkpoint folder holds that others need in one commit: model and config, "
        "the code that loads it and its pipelines without hyperrep_hf (trust_remote_code), the weight tokenizer, "
        "probes/, sampling/, the model card (model-index from the saved probes), training_args.json and "
        "metrics.jsonl; never checkpoints/ (optimizer states). Then pipeline(TASK, model=REPO_ID) works anywhere.",
    )
    p.add_argument("checkpoint", help="checkpoint folder (what `hyperrep train` wrote)")
    p.add_argument("repo_id", help="model repo to push to, org/name (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to commit to (created from main if new; default main)")
    p.add_argument("--commit-message", default=None, help="commit message")
    p.add_argument("--logs", action="store_true", help="also upload the TensorBoard logs (runs/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import push_checkpoint

    commit = push_checkpoint(args.checkpoint, args.repo_id, private=args.private, revision=args.revision,
                             commit_message=args.commit_message, include_logs=args.logs)
    print(f"pushed {args.checkpoint} to {args.repo_id} (commit {commit.oid}): {commit.commit_url}")
    return 0


__all__ = ["register"]
