"""Sub-commands of the `hyperrep` CLI: each module has `register(subparsers)`."""
