#!/usr/bin/env bash
# The GPU benchmarks and checks in one go, sized to finish within DEADLINE seconds (a lent GPU
# machine gives a session about 15 minutes, start-up included).
#
#   OUT=gpu_out bash scripts/gpu_checks.sh          # on a machine with a CUDA GPU
#   QUICK=1 OUT=gpu_out bash scripts/gpu_checks.sh  # a smoke test of the whole flow (CPU too)
#
# 1. Benchmarks on the GPU: population training (bench_population), SaneModel steps (bench_sane),
#    the SANE training loop (bench_training).
# 2. The probe and generation study at a larger zoo size, all through the `hyperrep` CLI: an
#    mnist-seed and an mnist-hyp zoo built on the GPU (population training; MODELS each, by default
#    as many as the measured population speed allows in ZOO_BUDGET seconds, at most 1000), SANE
#    trained on each (epochs sized from a 40-step calibration run to the time left), the probe
#    table (SANE / s(W) / W) of each, and the generation table of the seed zoo.
# 3. The tests of the code that picks the GPU by default (zoo build, trainer, pipelines).
# Every step runs under a time limit; $OUT/summary.txt collects the tables as they come and
# $OUT/logs.tgz the full logs. Sizes: MODELS, ZOO_EPOCHS (15), SANE_EPOCHS (default: sized),
# SANE_BATCH (64), D_MODEL (256), LAYERS (4), HEADS (4), LR (1e-3), SAMPLES (10), DEADLINE (560).
set -u
OUT=${OUT:-gpu_out}
WORK=${WORK:-/tmp/gpu_work}
if [ "${QUICK:-0}" = 1 ]; then
  : "${MODELS:=12}" "${ZOO_EPOCHS:=2}" "${SANE_EPOCHS:=1}" "${SANE_BATCH:=8}" "${D_MODEL:=32}" "${LAYERS:=1}"
  : "${HEADS:=2}" "${SAMPLES:=2}" "${DEADLINE:=3000}" "${DEVICE:=cpu}"
  POP_ARGS="--models 8 --train-images 200 --single 2"; SANE_ARGS="--quick"
fi
ZOO_EPOCHS=${ZOO_EPOCHS:-15}; SANE_BATCH=${SANE_BATCH:-64}; D_MODEL=${D_MODEL:-256}; LAYERS=${LAYERS:-4}
HEADS=${HEADS:-4}; LR=${LR:-1e-3}; SAMPLES=${SAMPLES:-10}; DEADLINE=${DEADLINE:-560}; ZOO_BUDGET=${ZOO_BUDGET:-120}
DEVICE=${DEVICE:-cuda}; POP_ARGS=${POP_ARGS:-"--models 256 --train-images 4000"}; SANE_ARGS=${SANE_ARGS:-}
LOGS="$WORK/logs"
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

log() { echo "[$(date -u +%T) +${SECONDS}s] $*" | tee -a "$OUT/summary.txt"; }
if ! command -v hyperrep > /dev/null; then  # the package is on PYTHONPATH, not installed
  mkdir -p "$WORK/bin"
  printf '#!/bin/sh\nexec python3 -c "import sys; from hyperrep_hf.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' > "$WORK/bin/hyperrep"
  chmod +x "$WORK/bin/hyperrep"; export PATH="$WORK/bin:$PATH"
fi
# step NAME SECONDS COMMAND...: run under min(SECONDS, time to DEADLINE), log to $LOGS/NAME.log,
# append the log's tail (progress bars dropped) to the summary and refresh $OUT/logs.tgz
step() {
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS)); shift 2
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then log "skip $name: past the deadline"; return 1; fi
  log "start $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  log "end $name: rc $rc"
  { grep -v -E "it/s\]|s/it\]|examples/s\]|^Loading|^Writing" "$LOGS/$name.log" | tail -n 30; } >> "$OUT/summary.txt"
  tar czf "$OUT/logs.tgz" -C "$WORK" logs
  return $rc
}

log "machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo no GPU); $(nproc) cores"
python3 -c 'import torch, transformers, datasets, accelerate, hyperrep_hf; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "datasets", datasets.__version__, "accelerate", accelerate.__version__)' 2>&1 | tee -a "$OUT/summary.txt"

step bench_population 60 python3 scripts/bench_population.py $POP_ARGS --device "$DEVICE" --repeats 2 --read-rows 2000 --json "$OUT/bench_population.json"
step bench_sane 60 python3 scripts/bench_sane.py $SANE_ARGS --device "$DEVICE" --variants baseline,baseline-bf16,sane,sane-bf16 --json "$OUT/bench_sane.json"
step bench_training 45 python3 scripts/bench_training.py --preset tiny --steps 50 --json "$OUT/bench_training.json"

# zoo size: what the measured population speed (scaled to all 4,000 images) builds in ZOO_BUDGET
# seconds (two builds share the GPU; evaluation after every epoch), at most 1000 models
if [ -z "${MODELS:-}" ]; then
  MODELS=$(python3 -c "import json; t = json.load(open('$OUT/bench_population.json'))['training'][0]; r = t['population_model_epochs_per_s'] * t['train_images'] / 4000; print(max(120, min(1000, int(r * $ZOO_BUDGET / ($ZOO_EPOCHS * 2.5)) // 20 * 20)))" 2>/dev/null || echo 200)
fi
log "zoos: $MODELS models x $ZOO_EPOCHS epochs each"
for preset in mnist-seed mnist-hyp; do
  step "zoo_$preset" $((ZOO_BUDGET * 2)) hyperrep zoo build --preset "$preset" --num-models "$MODELS" --epochs "$ZOO_EPOCHS" \
    --population-size 500 --device "$DEVICE" --out "$WORK/$preset" --quiet &
done
wait

sane_args() {  # sane_args PRESET OUTPUT EPOCHS: the `hyperrep train` arguments
  echo --zoo "$WORK/$1" --output_dir "$2" --preset tiny --d_model "$D_MODEL" --num_layers "$LAYERS" --num_heads "$HEADS" \
    --latent_dim 128 --epochs "$3" --batch_size "$SANE_BATCH" --learning_rate "$LR" --eval_every "$3" --save_every "$3" \
    --report_to none --progress false --overwrite_output_dir
}
plan_epochs() {  # plan_epochs PRESET: the epochs that fit the time left, from the calibration run
  python3 - "$WORK/calib-$1" "$LOGS/calibrate_$1.log" $((DEADLINE - SECONDS - 150)) <<'EOF'
import json, re, sys
folder, log, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
seconds = [r["seconds_per_step"] for r in map(json.loads, open(f"{folder}/metrics.jsonl")) if r["type"] == "train"][-1]
steps = int(re.search(r"(\d+) steps/epoch", open(log).read()).group(1))
print(max(3, min(60, int((budget - 30) / (seconds * steps)))))
EOF
}
# SANE epochs: 40 calibration steps give seconds per step; the epochs fill the time left but for
# 150 s kept for probes and sampling (both zoos train at once, as they calibrate)
if [ -z "${SANE_EPOCHS:-}" ]; then
  for preset in mnist-seed mnist-hyp; do
    step "calibrate_$preset" 60 hyperrep train $(sane_args "$preset" "$WORK/calib-$preset" 100) --stop_after_steps 40 --logging_steps 20 &
  done
  wait
fi
for preset in mnist-seed mnist-hyp; do
  epochs=${SANE_EPOCHS:-$(plan_epochs "$preset" || echo 5)}
  log "SANE on $preset: $epochs epochs"
  step "train_$preset" $((DEADLINE - SECONDS - 120)) hyperrep train $(sane_args "$preset" "$WORK/sane-$preset" "$epochs") &
done
wait

# probe tables (SANE averaged over 8 permutations, s(W), s(W)+GBT, W), then the generation table
for preset in mnist-seed mnist-hyp; do
  ck="$WORK/sane-$preset"
  [ -f "$ck/model.safetensors" ] || continue
  { step "probe_fit_$preset" 90 hyperrep probe fit --checkpoint "$ck" --zoo "$WORK/$preset" --features sane stats weights &&
    step "probe_eval_$preset" 60 hyperrep probe eval --checkpoint "$ck" --zoo "$WORK/$preset" --features sane stats stats-gbt weights \
      --json "$OUT/probes_$preset.json"; } &
done
wait
ck="$WORK/sane-mnist-seed"
if [ -f "$ck/model.safetensors" ]; then
  step sample_prepare 60 hyperrep sample --checkpoint "$ck" --prepare --zoo "$WORK/mnist-seed" &&  # + the bandwidth choice on validation
  step sample_evaluate 60 hyperrep sample --checkpoint "$ck" --zoo "$WORK/mnist-seed" --num-samples "$SAMPLES" \
    --method sub --evaluate --finetune-epochs 0 1 5 --out "$WORK/samples"
fi
# the tests of the code that picks the GPU by default (zoo build, trainer, pipelines), in the time left
step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_zoo_population.py tests/test_training.py tests/test_pipelines.py
log "done"
