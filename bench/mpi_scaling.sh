#!/usr/bin/env bash
# 1 process x 2 threads against 2 processes x 1 thread (mpirun), the same global batch, on the
# real MiniLM (sst2, LoRA r=8 on query,value); prints each run's summary line and the all-reduced
# bytes per step. SmolLM2 (all-linear r=8): the all-reduced bytes per step (one step).
#   bash bench/mpi_scaling.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-12}
BIN=build/lorafit
W=$(mktemp -d /tmp/lorafit_bench_mpi.XXXXXX)
trap 'rm -rf "$W"' EXIT
MPI=(mpirun -np 2 --allow-run-as-root --bind-to core --mca btl_vader_single_copy_mechanism none)
MINILM=(train --model models/all-MiniLM-L6-v2 --train data/sst2/train.tsv --max-train-samples 4000
        --max-length 64 --batch-size 32 --max-steps "$STEPS" --lora-r 8 --target-modules query,value
        --eval-every 0 --eval-max-batches 1 --log-every 1000)
echo "== MiniLM q,v r=8, 1 process x 2 threads"; uptime
"$BIN" "${MINILM[@]}" --threads 2 --output "$W/a" 2>&1 | grep -E "^steps|trainable params"
echo "== MiniLM q,v r=8, 2 processes x 1 thread"; uptime
"${MPI[@]}" "$BIN" "${MINILM[@]}" --threads 1 --output "$W/b" 2>&1 | grep -E "^steps|data parallel"
echo "== SmolLM2-135M all-linear r=8, 2 processes x 1 thread, 1 step"
"${MPI[@]}" "$BIN" train --model models/SmolLM2-135M-Instruct/*.gguf --train data/tinyshakespeare/input.txt \
  --block-size 32 --batch-size 2 --max-steps 1 --lora-r 8 --target-modules all-linear --eval-every 0 \
  --eval-max-batches 1 --threads 1 --output "$W/c" 2>&1 | grep -E "^steps|data parallel|trainable params"
