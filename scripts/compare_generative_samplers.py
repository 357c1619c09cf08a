"""GAN and diffusion samples against KDE30 on a trained checkpoint: test accuracy after fine-tuning
epochs, distance to the nearest anchor, and SUB over each.

    python scripts/compare_generative_samplers.py --zoo DEMO/zoo --checkpoint DEMO/sane [--json out.json]

Stores anchors when the checkpoint has none (`prepare_sampling`, bandwidth chosen on validation),
trains the GAN and diffusion samplers when it has none (`train_generative_sampler`: settings chosen
on validation accuracy of decoded draws; --retrain trains them again) and saves them with the
checkpoint. Then draws --num-samples models per method with the same seed (SUB: the best of
--num-draws by validation accuracy), and prints one Markdown table: test accuracy (mean +- std)
after each of --epochs of fine-tuning, and the mean weight-space distance of the decoded samples to
their nearest decoded anchor, in units of the median distance between neighbouring anchors
(`nearest_anchor_distance`; 0 = a copy of an anchor), and at the first of --epochs each method's
difference to KDE30 with its 95% interval over --bootstrap resamples of the models (level: the
interval includes 0). The test split is read for the table only.
"""

from __future__ import annotations

import argparse
import time

import torch

METHODS = ("kde30", "gan", "diffusion", "sub", "sub-gan", "sub-diffusion")


def main(argv=None) -> int:
    from hyperrep_hf.demo import generation_difference_column, pivot_generation_table
    from hyperrep_hf.downstream.evaluation import format_table, generation_table
    from hyperrep_hf.downstream.generation import (
        ModelGenerator,
        SamplingAnchors,
        format_trials,
        nearest_anchor_distance,
        prepare_sampling,
        train_generative_sampler,
    )
    from hyperrep_hf.files import atomic_write_json
    from hyperrep_hf.zoo import load_zoo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--num-samples", type=int, default=10)
    p.add_argument("--num-draws", type=int, default=50, help="SUB: models drawn, the best --num-samples kept")
    p.add_argument("--epochs", nargs="+", type=int, default=[0, 1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kde-scales", nargs="*", type=float, default=[],
                   help="extra KDE30 rows at these bandwidth scales (e.g. one whose draws lie as far from the anchors "
                   "as the GAN's), beside the validation-chosen one")
    p.add_argument("--retrain", nargs="*", choices=("gan", "diffusion"), default=None, metavar="KIND",
                   help="train the samplers again: all (no KIND) or those named (gan, diffusion)")
    p.add_argument("--steps", nargs="+", type=int, default=None,
                   help="training steps tried for the samplers trained here (default GENERATIVE_STEPS of each kind)")
    p.add_argument("--predictions", nargs="+", choices=("epsilon", "sample"), default=None,
                   help="diffusion trained here: what its denoiser predicts, the grid validation chooses from "
                   "(default GENERATIVE_PREDICTIONS: both)")
    p.add_argument("--diversity", default=None,
                   help="training: 'kde', '1.5kde' or a distance, the diversity floor of train_generative_sampler "
                   "(default none)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the intervals of the difference to kde30")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)

    zoo = load_zoo(args.zoo)
    timings = {}
    try:
        SamplingAnchors.load(args.checkpoint)
    except FileNotFoundError:
        start = time.time()
        prepare_sampling(args.checkpoint, zoo)
        timings["prepare_s"] = time.time() - start
    gen = ModelGenerator.from_pretrained(args.checkpoint)
    for kind in ("gan", "diffusion"):
        if (args.retrain is not None and kind in (args.retrain or ("gan", "diffusion"))) or kind not in gen.anchors.samplers:
            start = time.time()
            grid = {"predictions": args.predictions} if args.predictions and kind == "diffusion" else {}
            train_generative_sampler(gen, kind, steps=args.steps, seed=args.seed, diversity=args.diversity, **grid)
            timings[f"train_{kind}_s"] = time.time() - start
            gen.anchors.save(args.checkpoint)
    choices = {kind: {"settings": s.settings, "trials": s.config["choice"]["trials"], "num_anchors": s.config["num_anchors"],
                      "rank": s.config["rank"], "diversity_floor": s.config["choice"]["diversity_floor"]}
               for kind, s in gen.anchors.samplers.items()}
    for kind, c in choices.items():
        print(f"{kind}: {c['num_anchors']} anchors, {c['rank']} components; validation accuracy of 8 draws: "
              f"{format_trials(c['trials'])}")
    print(f"bandwidth scale {gen.anchors.info['bandwidth_scale']:g}: {gen.anchors.info.get('bandwidth_choice')}")

    groups, distance = {}, {}
    runs = [(m, m, {}) for m in args.methods] + [(f"kde30 x{k:g}", "kde30", {"bandwidth_scale": k}) for k in args.kde_scales]
    for method, name, options in runs:
        start = time.time()
        if name.startswith("sub"):
            options = {**options, "num_draws": args.num_draws}
        latents, _ = gen.draw(args.num_samples, name, args.seed, **options)
        items = gen.items(gen.decode(latents), latents, seed=args.seed)
        timings[f"draw_{method}_s"] = time.time() - start
        groups[method] = [item["model"] for item in items]
        distance[method] = nearest_anchor_distance(gen, latents).tolist()
    rows = generation_table(args.checkpoint, zoo, methods=(), samples=groups, num_samples=args.num_samples,
                            epochs=args.epochs, seed=args.seed, generator=gen, bootstrap=args.bootstrap)
    table = pivot_generation_table(rows)  # level with KDE30: the interval of the difference includes 0
    for entry in table:
        if entry["source"] in distance:
            d = torch.tensor(distance[entry["source"]])
            entry["distance to nearest anchor"] = f"{d.mean():.2f} [{d.min():.2f}, {d.max():.2f}]"
    columns = ["source", *(f"epoch {e}" for e in sorted(args.epochs)), generation_difference_column(min(args.epochs)),
               "distance to nearest anchor"]
    print(format_table(table, columns))
    print({k: round(v, 1) for k, v in timings.items()})
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "distance": distance, "choices": choices, "timings": timings,
                                      "args": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
