"""`hyperrep demo`: the main job end to end on the built-in data (see hyperrep_hf.demo)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="build a zoo, train SANE, probe and generate; tables and plots in --out",
                       description="The main job on built-in data (no download): zoo -> SANE -> probes -> "
                       "sampling, with tables and plots. Reruns with the same --out reuse finished stages.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="a tiny digits zoo and a tiny SANE: the same path in about a minute")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, quick=args.quick, progress=args.progress)
    return 0
