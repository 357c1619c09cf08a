"""`hyperrep sample`: store sampling anchors in a checkpoint, draw new models, evaluate them."""

from __future__ import annotations

import argparse

from . import add_checkpoint_arguments, add_device_argument, open_pipeline, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate new models from a SANE checkpoint (and store its sampling anchors)",
        description="Draw new models with the weight-generation pipeline. --prepare first embeds a zoo's "
        "models as sampling anchors into the checkpoint folder (needed once); --train-samplers gan diffusion "
        "trains generative samplers on them (for --method gan / diffusion). --evaluate prints accuracy "
        "after fine-tuning epochs for sampled, from-scratch and zoo models.",
    )
    add_checkpoint_arguments(p, "SANE checkpoint folder or Hub repo id (model, tokenizer, sampling anchors)")
    p.add_argument("--prepare", action="store_true", help="embed --zoo as sampling anchors into the checkpoint folder")
    p.add_argument("--zoo", default=None, help="zoo folder or Hub dataset id (for --prepare and --evaluate)")
    p.add_argument("--split", default="train", help="zoo split the anchors come from (default: train)")
    p.add_argument("--anchor-epochs", nargs="+", type=int, default=None,
                   help="zoo epochs the anchors come from (default: the last one)")
    p.add_argument("--num-samples", type=int, default=0, help="models to generate (default 0: only --prepare)")
    p.add_argument("--method", default="kde30",
                   help="kde30 (default; kde50: the best 50%% anchors), sub, boot, gauss (the published weak baseline, "
                   "N(0, 10^2) per latent dimension), gauss-fit (a Gaussian fitted to the best anchors), neighbours "
                   "(with --prompts), gan / diffusion (the samplers --train-samplers trains), sub-gan / sub-diffusion "
                   "(SUB over their draws)")
    p.add_argument("--train-samplers", nargs="+", default=None, choices=("gan", "diffusion"), metavar="KIND",
                   help="train a GAN and/or latent diffusion sampler (gan, diffusion) on the stored anchors, settings "
                   "chosen on the task's validation split, and save them into the checkpoint folder's sampling/")
    p.add_argument("--sampler-fraction", type=float, default=0.3,
                   help="--train-samplers: the best fraction of the anchors they learn from (default 0.3, as kde30)")
    p.add_argument("--sampler-diversity", default=None, metavar="FLOOR",
                   help="--train-samplers: pass over settings whose validation draws lie closer to their nearest "
                        "anchor than FLOOR (a distance, 'kde': as far as KDE draws, '1.5kde': 1.5 times as far); "
                        "default: accuracy alone")
    p.add_argument("--sampler-steps", nargs="+", type=int, default=None, metavar="N",
                   help="--train-samplers: training steps to choose from on validation (default: GAN 1000, 1100, ..., 8000, "
                   "snapshots of one run; diffusion 2000 4000 6000 8000, each with a noise and a sample predictor)")
    p.add_argument("--prompts", nargs="+", default=None, metavar="FILE", help=".safetensors models to sample around")
    p.add_argument("--num-draws", type=int, default=None, help="SUB/BOOT: models drawn per round (default 5 x samples)")
    p.add_argument("--rounds", type=int, default=2, help="BOOT: rounds (default 2)")
    p.add_argument("--bandwidth-scale", default=None, metavar="auto|SCALE",
                   help="KDE/SUB/BOOT: Silverman's bandwidth times this; auto (default) = the scale chosen on the "
                   "task's validation split by --prepare and stored with the anchors (1 = the plain rule)")
    p.add_argument("--spread", type=float, default=None, help="neighbours: noise as a fraction of the anchors' std (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same models)")
    p.add_argument("--task", default=None, help="task for BatchNorm conditioning, SUB scoring and --evaluate "
                   "(default: the zoo's; another task measures transfer)")
    p.add_argument("--out", default=None, help="folder for sample-NNN.safetensors state_dicts + samples.json")
    p.add_argument("--evaluate", action="store_true", help="fine-tune samples, from-scratch and zoo models and print accuracy")
    p.add_argument("--finetune-epochs", nargs="+", type=int, default=[0, 1, 5], help="epochs for --evaluate (default 0 1 5)")
    add_device_argument(p, "the SANE model")
    p.set_defaults(func=run)


def _bandwidth_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise ValueError(f"--bandwidth-scale {text!r} is no bandwidth scale; use auto or a number >= 0 (e.g. 0.25)")
    return value


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safetensors.torch import load_file, save

    from ..files import atomic_write_bytes, atomic_write_json

    if args.num_samples < 0 or (args.num_samples == 0 and not (args.prepare or args.train_samplers)):
        raise ValueError(f"--num-samples must be positive (got {args.num_samples}); or pass --prepare to only store "
                         "anchors (--train-samplers to only train samplers)")
    zoo = None
    scale = "auto" if args.bandwidth_scale in (None, "auto") else _bandwidth_scale(args.bandwidth_scale)
    if args.prepare or args.evaluate:
        if not args.zoo:
            raise ValueError("--prepare and --evaluate need --zoo")
        from ..zoo import load_zoo

        zoo = load_zoo(args.zoo)
    if args.prepare:
        if not Path(args.checkpoint).is_dir():
            raise ValueError(f"--prepare writes into the checkpoint folder; {args.checkpoint} is not a local folder")
        from ..downstream.generation import prepare_sampling

        anchors = prepare_sampling(args.checkpoint, zoo, args.split, args.anchor_epochs,
                                   bandwidth_scale=scale, task=args.task)
        print(f"{len(anchors.scores)} anchors (epochs {anchors.info['epochs']}) stored in {args.checkpoint}/sampling/")
        choice = anchors.info["bandwidth_choice"]
        if "validation_accuracy" in choice:
            figures = ", ".join(f"{s:g}: {a:.3f}" for s, a in zip(choice["scales"], choice["validation_accuracy"]))
            print(f"bandwidth scale {anchors.info['bandwidth_scale']:g}, chosen by validation accuracy of "
                  f"{choice['num_samples']} decoded KDE draws per scale ({figures})")
    if args.train_samplers:
        _train_samplers(args)
    if args.num_samples == 0:
        return 0

    pipe = open_pipeline("weight-generation", args, task_data=args.task, device=resolve_device(args.device))
    prompts = [load_file(f) for f in args.prompts] if args.prompts else None
    options = {"num_draws": args.num_draws, "rounds": args.rounds} if args.method.lower().startswith(("sub", "boot")) else {}
    options.update({k: v for k, v in (("bandwidth_scale", scale), ("spread", args.spread)) if v is not None})
    samples = pipe(prompts, num_samples=args.num_samples, method=args.method, seed=args.seed, **options)
    print(f"{len(samples)} models sampled with {args.method} (seed {args.seed})")
    if args.out:
        out = Path(args.out)
        for i, s in enumerate(samples):
            state = {k: v.contiguous() for k, v in s["state_dict"].items()}
            atomic_write_bytes(out / f"sample-{i:03d}.safetensors", save(state))
        atomic_write_json(out / "samples.json", {
            "checkpoint": str(args.checkpoint), "method": args.method, "seed": args.seed,
            "architecture": pipe.generator.anchors.info["architecture"],
            "architecture_kwargs": pipe.generator.anchors.info.get("architecture_kwargs", {}),
            "files": [f"sample-{i:03d}.safetensors" for i in range(len(samples))],
            "scores": [s.get("score") for s in samples],
            "bandwidth_scale": pipe.generator.bandwidth_scale(scale) if _kind(args.method) in ("kde", "sub", "boot") else None,
        })
        print(f"state_dicts written to {out}/")
    if args.evaluate:
        from ..downstream.evaluation import format_table, generation_table

        rows = generation_table(args.checkpoint, zoo, methods=(), samples={args.method: [s["model"] for s in samples]},
                                num_samples=len(samples), epochs=args.finetune_epochs, task=args.task, seed=args.seed)
        print(format_table(rows))
    return 0


def _kind(method: str) -> str:
    from ..downstream.samplers import parse_method

    return parse_method(method)[0]


def _train_samplers(args: argparse.Namespace) -> None:
    """--train-samplers: GAN / diffusion samplers on the checkpoint's anchors, saved beside them."""
    from pathlib import Path

    from ..downstream.generation import (
        ModelGenerator,
        check_diversity,
        format_trials,
        train_generative_sampler,
    )

    if not Path(args.checkpoint).is_dir():
        raise ValueError(f"--train-samplers writes into the checkpoint folder; {args.checkpoint} is not a local folder")
    if not 0 < args.sampler_fraction <= 1:
        raise ValueError(f"--sampler-fraction must be in (0, 1], got {args.sampler_fraction}")
    steps = args.sampler_steps
    if steps is not None and min(steps) <= 0:
        raise ValueError(f"--sampler-steps must be positive, got {steps}")
    diversity = check_diversity(args.sampler_diversity)
    gen = ModelGenerator.from_pretrained(args.checkpoint, task=args.task, device=resolve_device(args.device))
    for kind in dict.fromkeys(args.train_samplers):
        sampler = train_generative_sampler(gen, kind, args.sampler_fraction, steps=steps, seed=args.seed,
                                           diversity=diversity)
        choice = sampler.config["choice"]
        floor = "" if choice["diversity_floor"] is None else f" at distance >= {choice['diversity_floor']:.3f} where any reaches it"
        diffusion = f", {sampler.settings['prediction']} predictor, eta {sampler.settings['eta']:g}" if kind == "diffusion" else ""
        print(f"{kind}: {sampler.settings['steps']} steps{diffusion}, noise scale {sampler.settings['noise_scale']:g} on the "
              f"best {args.sampler_fraction:.0%} of the anchors, chosen by validation accuracy of decoded draws{floor} "
              f"({format_trials(choice['trials'])})")
    gen.anchors.save(args.checkpoint)
    print(f"samplers {sorted(gen.anchors.samplers)} stored in {args.checkpoint}/sampling/")
