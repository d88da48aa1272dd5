#!/usr/bin/env bash
# QLoRA memory (docs/BENCHMARKS.md): the bytes of the base's layer Linear weights in memory and
# the peak RSS of a short LoRA run, fp32 base against --quantize nf4-dq (and nf4, q4_1).
#
#   bash bench/qlora_memory.sh [BUILD_DIR] [STEPS]      (defaults: build, 3)
#   QUANTS="none nf4-dq nf4 q4_1" bash bench/qlora_memory.sh    (train runs; default none nf4-dq)
#   TRAIN_FLAGS="--gradient-checkpointing" bash bench/qlora_memory.sh   (extra lorafit train flags)
#
#   1. `lorafit info MODEL --quantize Q`: "weight memory: ... layer Linear weights X MiB = R x
#      their F32 bytes" for SmolLM2-135M (F32 folder from tools/make_smollm2_hf.py) and MiniLM;
#      the issue's bound for NF4 + double quantization is R <= 0.135;
#   2. peak RSS (getrusage of the child) of `lorafit train` on SmolLM2, LoRA r=8 all-linear,
#      batch 4 x 256 (the side-by-side configuration), STEPS steps, for each Q; the bound for
#      nf4-dq is 1.0 GiB (PyTorch + PEFT + bitsandbytes: 6.4 GiB, bench/side_by_side.sh 2 nf4).
#   3. with TORCH=1, the same configuration through PyTorch + PEFT (+ bitsandbytes NF4 with
#      double quantization for nf4-dq) in the venv of tools/pyenv.sh, bench/torch_train.py lm,
#      THREADS threads (2), 1 warm-up and STEPS timed steps; --gradient-checkpointing in
#      TRAIN_FLAGS turns on transformers' checkpointing there too. Peak RSS: VmHWM of that process.
# Prints one line per measurement; nothing passes or fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
STEPS=${2:-3}
LORAFIT=$BUILD/lorafit
PY=${PYTHON:-python3}
export LORAFIT_VENV=${LORAFIT_VENV:-$HOME/.cache/lorafit/venv}
SMOL=${SMOL:-runs/smollm2-f32}
if [ ! -f "$SMOL/model.safetensors" ]; then
  VPY=$(bash tools/pyenv.sh | tail -n 1)
  SMOL=$("$VPY" tools/make_smollm2_hf.py --out "$SMOL" | tail -n 1)
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
head -c 400000 data/tinyshakespeare/input.txt > "$T/train.txt" 2>/dev/null ||
  { echo "qlora_memory: no data/tinyshakespeare (run tools/fetch_data.sh)" >&2; exit 1; }

echo "== weight memory (lorafit info --quantize Q)"
for m in "$SMOL" models/all-MiniLM-L6-v2; do
  for q in none nf4-dq nf4 fp4 q8_0 q4_1; do
    line=$("$LORAFIT" info "$m" --quantize "$q" | grep '^weight memory:')
    echo "$(basename "$m") $q: ${line#weight memory: }"
  done
done

echo "== peak RSS of lorafit train (SmolLM2, LoRA r=8 all-linear, batch 4 x 256, $STEPS steps${TRAIN_FLAGS:+, $TRAIN_FLAGS})"
for q in ${QUANTS:-none nf4-dq}; do
  "$PY" - "$LORAFIT" "$SMOL" "$T/train.txt" "$T/run_$q" "$q" "$STEPS" "${TRAIN_FLAGS:-}" <<'EOF'
import resource, subprocess, sys, time
lorafit, model, data, out, q, steps, extra = sys.argv[1:]
cmd = [lorafit, "train", "--model", model, "--train", data, "--output", out, "--quantize", q,
       "--target-modules", "all-linear", "--lora-r", "8", "--batch-size", "4", "--block-size", "256",
       "--max-steps", steps, "--eval-every", "0", "--quiet", "--overwrite"] + extra.split()
t = time.time()
subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(f"train --quantize {q}: peak RSS {peak / 2**30:.3f} GiB, wall {time.time() - t:.1f} s")
EOF
done

if [ "${TORCH:-0}" = 1 ]; then
  VPY=$(bash tools/pyenv.sh | tail -n 1)
  gc=(); case " ${TRAIN_FLAGS:-} " in *" --gradient-checkpointing "*) gc=(--gradient-checkpointing) ;; esac
  echo "== peak RSS of PyTorch + PEFT (bench/torch_train.py lm, same configuration${gc:+, ${gc[*]}})"
  for q in ${QUANTS:-none nf4-dq}; do
    case $q in none) tq=none ;; nf4-dq) tq=nf4 ;; *) continue ;; esac
    "$VPY" bench/torch_train.py lm --model "$SMOL" --threads "${THREADS:-2}" --quant "$tq" \
      --warmup 1 --steps "$STEPS" "${gc[@]}" --text "$T/train.txt" | "$VPY" -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
q, peak, tps = r["quant"], r["peak_rss_bytes"] / 2**30, r["tokens_per_s"]
print(f"pytorch --quant {q}: peak RSS {peak:.3f} GiB, {tps:.0f} tokens/s")'
  done
fi
