"""Build a model zoo, spread over processes: the entry point for `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 4 scripts/build_zoo.py --preset mnist-hyp --out zoo/
    # on CPUs (see STACK.md: --cpu alone runs ONE process):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no scripts/build_zoo.py --preset digits-seed --out zoo/

Each process trains every world_size-th chunk of models and writes its own shards; the main process
writes the card. Rerunning the same command resumes an interrupted build. Same flags as
`hyperrep zoo build`.
"""

import sys

from hyperrep_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", "build", *sys.argv[1:]]))
