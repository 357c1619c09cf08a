"""Sub-commands of the `hyperrep` CLI: each module has `register(subparsers)`."""


def add_checkpoint_arguments(parser, help: str = "SANE checkpoint folder or Hub repo id (model + tokenizer)") -> None:
    parser.add_argument("--checkpoint", required=True, help=help)
    parser.add_argument("--revision", default=None,
                        help="with a Hub repo id: the branch, tag or commit to load (default: main)")


def open_pipeline(task: str, args, **kwargs):
    """transformers.pipeline(task) on --checkpoint at --revision; a checkpoint that cannot be loaded
    (no such repo or revision, no access, offline without a cached copy) is named in the error."""
    from transformers import pipeline

    try:
        return pipeline(task, model=args.checkpoint, revision=args.revision, **kwargs)
    except OSError as err:
        at = f" at revision {args.revision}" if args.revision else ""
        raise OSError(f"cannot load the checkpoint {args.checkpoint}{at}: {str(err).splitlines()[0]}") from err


def add_device_argument(parser, what: str) -> None:
    parser.add_argument("--device", default=None, help=f"torch device for {what} (default: cuda if available, else cpu)")


def resolve_device(name: str | None):
    """The torch.device a --device value names (None: cuda if available, else cpu); a clear error when
    it is malformed or names a GPU this machine does not have."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible on this machine; use --device cpu")
    return device
