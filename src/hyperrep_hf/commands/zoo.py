"""`hyperrep zoo build | info | import | push`: make, inspect, import and share model zoos."""

from __future__ import annotations

from . import resolve_device


def _build(args) -> int:
    from hyperrep_hf.zoo import build_zoo

    if (args.preset is None) == (args.config is None):
        raise ValueError("give exactly one of --preset NAME or --config FILE")
    zoo = build_zoo(
        args.config or args.preset,
        args.out,
        num_models=args.num_models,
        epochs=args.epochs,
        population_size=args.population_size,
        progress=not args.quiet,
        device=None if args.device is None else str(resolve_device(args.device)),
        num_threads=args.threads,
    )
    if zoo is not None:  # the main process of a multi-process build
        print(zoo)
    return 0


def _info(args) -> int:
    from hyperrep_hf.zoo import load_zoo

    zoo = load_zoo(args.path)
    print(f"zoo: {zoo.path}")
    print(f"architecture: {zoo.architecture} {zoo.architecture_kwargs}")
    print(f"task: {zoo.task}   weights per model: {zoo.num_weights}")
    print(f"varied: {', '.join(zoo.info.get('varied', [])) or '-'}")
    print(f"{'split':<11} {'models':>6} {'rows':>6} {'epochs':>9} {'diverged':>8}  test_acc at first / last epoch (min / median / max)")
    for split in zoo.dataset:
        df = zoo.metadata(split, ["model_id", "epoch", "test_acc", "diverged"])
        first, last = df.epoch.min(), df.epoch.max()
        spread = lambda s: f"{s.min():.3f} / {s.median():.3f} / {s.max():.3f}"  # noqa: E731
        print(
            f"{split:<11} {df.model_id.nunique():>6} {len(df):>6} {f'{first}..{last}':>9} {df[df.diverged].model_id.nunique():>8}  "
            f"{spread(df[df.epoch == first].test_acc)}  ->  {spread(df[df.epoch == last].test_acc)}"
        )
    return 0


def _import(args) -> int:
    from hyperrep_hf.zoo import import_modelzoos

    if args.format != "modelzoos":
        raise ValueError(f"unknown import format {args.format!r}; supported: modelzoos")
    zoo = import_modelzoos(args.path, args.out, architecture=args.architecture, task=args.task, progress=not args.quiet)
    print(zoo)
    return 0


def _push(args) -> int:
    from hyperrep_hf.zoo import push_zoo

    url = push_zoo(args.path, args.repo_id, private=args.private)
    print(f"pushed {args.path} to {url}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("zoo", help="build, inspect, import and share model zoos")
    sub = parser.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")

    b = sub.add_parser("build", help="train a zoo (resumes an unfinished build in the same --out)")
    b.add_argument("--preset", help="a preset name: mnist-seed, mnist-hyp, digits-seed, digits-hyp")
    b.add_argument("--config", help="a YAML/JSON zoo config instead of a preset")
    b.add_argument("--out", required=True, help="output folder (the zoo dataset)")
    b.add_argument("--num-models", type=int, help="shrink or grow the preset to N models")
    b.add_argument("--epochs", type=int, help="train E epochs (checkpoints 0..E)")
    b.add_argument("--population-size", type=int, help="models trained at once per chunk")
    b.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    b.add_argument("--threads", type=int, help="torch CPU threads per process (default 1 on CPU: scale out with processes)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    i = sub.add_parser("info", help="what a zoo holds: models, epochs, accuracy spread per split")
    i.add_argument("path", help="zoo folder or Hub dataset repo id")
    i.set_defaults(func=_info)

    m = sub.add_parser("import", help="convert a downloaded zoo (Model Zoos trial folders) to a zoo dataset")
    m.add_argument("path", help="folder of trials")
    m.add_argument("--format", default="modelzoos", help="source format (modelzoos)")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--architecture", help="architecture name (default: inferred from the checkpoints)")
    m.add_argument("--task", help="task name to record (e.g. mnist)")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_import)

    p = sub.add_parser("push", help="upload a zoo folder to the Hub as a dataset repo")
    p.add_argument("path", help="zoo folder")
    p.add_argument("repo_id", help="org/name")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_push)


__all__ = ["register"]
