"""What a launcher started: catch `accelerate launch` running one process where several were asked for."""

from __future__ import annotations

import os
import warnings

HOW = ("for N real processes on CPUs run `accelerate launch --multi_gpu --num_processes N --num_machines 1 "
       "--mixed_precision no --dynamo_backend no SCRIPT ...` or `torchrun --standalone --nproc_per_node N SCRIPT ...`")


def check_launch() -> None:
    """Warn when `accelerate launch` was asked for several processes but started only this one.

    accelerate's simple launcher (what `--cpu --num_processes 2` uses) sets MASTER_ADDR for a
    multi-process job and then runs a single process, without WORLD_SIZE: the job would train on
    one core without a word (STACK.md).
    """
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
    asked_for_more = "MASTER_ADDR" in os.environ
    if launched_by_accelerate and asked_for_more and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        warnings.warn(f"accelerate launch was asked for several processes but started only this one (WORLD_SIZE is "
                      f"{os.environ.get('WORLD_SIZE', 'unset')}); {HOW}", stacklevel=2)


__all__ = ["check_launch"]
