"""`hyperrep zoo build | info | import | push`: make, inspect, import and share model zoos."""

from __future__ import annotations

import os

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
        workers=args.workers or os.cpu_count() or 1,
    )
    if zoo is not None:  # the main process of a multi-process build
        print(zoo)
    return 0


def _info(args) -> int:
    from hyperrep_hf.zoo import load_zoo

    zoo = load_zoo(args.path)
    print(f"zoo: {zoo.path}")
    print(f"architecture: {zoo.architecture} {zoo.architecture_kwargs}")
    from hyperrep_hf.zoo.tasks import task_label

    print(f"task: {task_label(zoo.task) if zoo.task else '-'}   weights per model: {zoo.num_weights}")
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


# --option -> import_zoo keyword, for the options only some formats take
FORMAT_OPTIONS = {
    "split_file": "--split-file", "metadata": "--metadata", "architecture": "--architecture",
    "architecture_kwargs": "--architecture-kwargs", "repo": "--repo", "path_in_repo": "--path",
    "repo_type": "--repo-type", "revision": "--revision", "models": "--models",
}


def _import(args) -> int:
    import inspect
    import json

    from hyperrep_hf.zoo import IMPORT_FORMATS, import_zoo
    from hyperrep_hf.zoo.importers import resolve_format

    options = {k: getattr(args, k) for k in FORMAT_OPTIONS if getattr(args, k) is not None}
    fmt = resolve_format(args.format, args.path, options)
    if "architecture_kwargs" in options:
        try:
            options["architecture_kwargs"] = json.loads(options["architecture_kwargs"])
        except json.JSONDecodeError as err:
            raise ValueError(f"--architecture-kwargs is not JSON ({err}); e.g. '{{\"in_channels\": 3}}'") from err
        if not isinstance(options["architecture_kwargs"], dict):
            raise ValueError("--architecture-kwargs must be a JSON object of keyword arguments")
    accepted = inspect.signature(IMPORT_FORMATS[fmt]).parameters
    wrong = [FORMAT_OPTIONS[k] for k in options if k not in accepted]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} do(es) not apply to --format {fmt}")
    zoo = import_zoo(fmt, args.path, args.out, task=args.task, seed=args.seed, progress=not args.quiet, **options)
    print(zoo)
    return 0


def _push(args) -> int:
    from hyperrep_hf.zoo import push_zoo

    url = push_zoo(args.path, args.repo_id, private=args.private, revision=args.revision, commit_message=args.commit_message)
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
    b.add_argument("--workers", type=int, default=None,
                   help="processes training chunks of models at once on a CPU (default: one per core)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    i = sub.add_parser("info", help="what a zoo holds: models, epochs, accuracy spread per split")
    i.add_argument("path", help="zoo folder or Hub dataset repo id")
    i.set_defaults(func=_info)

    m = sub.add_parser("import", help="convert a published zoo or your own checkpoints to a zoo dataset (resumes after a kill)")
    m.add_argument("path", nargs="?", help="the source: a folder, archive, hf:// path or file of Hub ids (none for --repo / --models)")
    m.add_argument("--format", default="auto", help="smallcnnzoo, modelzoos, checkpoints, hub-models (default: auto, from PATH)")
    m.add_argument("--out", required=True, help="output folder (appears only when the import is complete)")
    m.add_argument("--architecture", help="registered name or package.module:builder (modelzoos: default from the trials' config; "
                   "checkpoints / hub-models: default from a transformers config, else rows are state_dicts)")
    m.add_argument("--architecture-kwargs", help="JSON keyword arguments of the architecture, e.g. '{\"in_channels\": 3}'")
    m.add_argument("--split-file", help="smallcnnzoo: NFN's *_split.csv, to reproduce its train/validation/test split")
    m.add_argument("--metadata", help="checkpoints: table (CSV, JSON lines, parquet) with file, model_id, epoch and property columns")
    m.add_argument("--repo", help="modelzoos: Hub repo holding the zoo (with --path inside it)")
    m.add_argument("--path", dest="path_in_repo", help="modelzoos: folder or archive inside --repo")
    m.add_argument("--repo-type", choices=("dataset", "model"), help="modelzoos: type of --repo (default dataset)")
    m.add_argument("--revision", help="modelzoos: revision of --repo")
    m.add_argument("--models", nargs="+", help="hub-models: repo ids org/name[@revision], or one file with an id per line")
    m.add_argument("--task", help="task name to record (e.g. mnist)")
    m.add_argument("--seed", type=int, default=0, help="seed of the by-model split (default 0)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_import)

    p = sub.add_parser("push", help="upload a zoo folder to the Hub as a dataset repo")
    p.add_argument("path", help="zoo folder")
    p.add_argument("repo_id", help="org/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to commit to (created from main if new; default main)")
    p.add_argument("--commit-message", default=None, help="commit message")
    p.set_defaults(func=_push)


__all__ = ["register"]
