#!/usr/bin/env bash
# lorafit against PyTorch + PEFT on the same CPU, in one run, same thread count, alternating the
# two sides (lorafit, PyTorch, lorafit, PyTorch, ...) so that drift of the machine hits both.
#
#   bash bench/side_by_side.sh [THREADS] [WORKLOAD...]
#     WORKLOAD: minilm   MiniLM SST-2, MAX_STEPS (300) x 32, LoRA q,v dropout 0, end to end:
#                        lorafit train against transformers.Trainer + PEFT with the default
#                        sampler and with group_by_length; training time and dev accuracy
#               smollm2  SmolLM2-135M F32, LoRA r=8 all-linear, batch 4 x 256: lorafit fp32 and
#                        --compute-dtype bf16 against PyTorch fp32 and PyTorch bf16 autocast;
#                        tokens/s (median step after warm-up), peak RSS, and the achieved
#                        GFLOP/s of our step
#               dora     the same with DoRA
#               nf4      the same on an NF4 + double-quant base (PyTorch: bitsandbytes on CPU;
#                        lorafit: --quantize nf4-dq, fp32 tiles and, with bf16, BF16 tiles)
#               gemm     the dense products of one step (forward and input gradient of every
#                        frozen linear layer, LM head included) as raw library calls on the
#                        same shapes: cblas_sgemm fp32 and oneDNN BF16 (build/bench_step_gemm),
#                        GFLOP/s beside our step's
#     default: minilm smollm2 dora gemm
# Env: REPEAT (alternations per workload, default 2; minilm 1), STEPS (timed LM steps, 6), WARMUP
# (2), MAX_STEPS (minilm, 300), BATCH and BLOCK (LM blocks per step and tokens per block: 4, 256), LORAFIT (binary, build/lorafit), OUT (results folder,
# runs/side_by_side), DTYPES (lorafit's --compute-dtype values, default "fp32 bf16"; bf16 is left
# out with a note where this CPU or build has none), GEMM_REPS (5), LORAFIT_VENV (the Python
# venv, see tools/pyenv.sh). A quick end-to-end check of the harness (numbers meaningless):
#   STEPS=2 WARMUP=1 REPEAT=1 MAX_STEPS=10 GEMM_REPS=1 BATCH=1 BLOCK=64 bash bench/side_by_side.sh 2 Results: one JSON line per run in $OUT/results.jsonl and a table on stdout.
# Needs: build/lorafit (scripts/setup.sh), models and data (tools/fetch_models.sh,
# tools/fetch_data.sh); the Python side creates its venv (tools/pyenv.sh, cached after the first
# run). Run it alone on the machine: it measures time.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2}
shift || true
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(minilm smollm2 dora gemm)
REPEAT=${REPEAT:-2}
STEPS=${STEPS:-6}
WARMUP=${WARMUP:-2}
MAX_STEPS=${MAX_STEPS:-300}
BATCH=${BATCH:-4}
BLOCK=${BLOCK:-256}
LORAFIT=${LORAFIT:-build/lorafit}
OUT=${OUT:-runs/side_by_side}
export OMP_NUM_THREADS=$N OPENBLAS_NUM_THREADS=$N MKL_NUM_THREADS=$N
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONWARNINGS=ignore TQDM_DISABLE=1
PY=$(bash tools/pyenv.sh | tail -n 1)
if ! "$PY" -c "import bitsandbytes" 2>/dev/null; then "$PY" -m pip install -q "bitsandbytes==0.50.*"; fi
[ -x "$LORAFIT" ] || { echo "side_by_side: $LORAFIT not found (bash scripts/setup.sh)" >&2; exit 1; }
bash tools/fetch_models.sh >/dev/null
bash tools/fetch_data.sh >/dev/null
mkdir -p "$OUT"
# bf16 only where the build and the CPU have it (the CLI says why not).
DTYPES=${DTYPES:-fp32 bf16}
if [[ " $DTYPES " == *" bf16 "* ]] && ! "$LORAFIT" --version | grep -q "^bf16 compute: yes"; then
  echo "side_by_side: lorafit --compute-dtype bf16 left out: $("$LORAFIT" --version | grep '^bf16 compute')" >&2
  DTYPES=${DTYPES//bf16/}
fi
RES=$OUT/results.jsonl
: >"$RES"
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | xargs)
echo "== $(date -u '+%F %H:%M UTC')  $(nproc --all) cores, $CPU [$FLAGS]  threads=$N"

# peak RSS of a command, in bytes (GNU time is not on every machine: read it from /proc via python)
run_timed() {  # run_timed LOGFILE CMD... : runs CMD, prints "wall_s peak_rss_bytes"
  local log=$1; shift
  "$PY" - "$log" "$@" <<'EOF'
import os, resource, subprocess, sys, time
log = sys.argv[1]
t0 = time.perf_counter()
with open(log, "w") as f:
    rc = subprocess.call(sys.argv[2:], stdout=f, stderr=subprocess.STDOUT)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
if rc != 0:
    sys.stderr.write(open(log).read()[-4000:])
    sys.exit(f"side_by_side: {' '.join(sys.argv[2:5])}... failed with {rc}")
print(f"{wall:.3f} {peak}")
EOF
}

# The LM steps of a lorafit run: median of the per-step times after WARMUP steps, from log.jsonl.
lorafit_lm_json() {  # lorafit_lm_json RUN_DIR DTYPE METHOD PEAK QUANT
  "$PY" - "$@" "$N" "$WARMUP" "$BATCH" "$BLOCK" <<'EOF'
import json, statistics, sys
run, label, method, peak, quant = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
n, warm, batch, block = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
steps, summ = [], None
for line in open(run + "/log.jsonl"):
    r = json.loads(line)
    if r.get("type") == "summary":
        summ = r
    elif "elapsed_s" in r and "step" in r:
        steps.append((r["step"], r["elapsed_s"], r["tokens"]))
steps.sort()
dts = [b[1] - a[1] for a, b in zip(steps, steps[1:]) if a[0] >= warm]
toks = [b[2] for a, b in zip(steps, steps[1:]) if a[0] >= warm]  # tokens of that step
med = statistics.median(dts)
print(json.dumps({"side": "lorafit", "workload": "lm", "method": method, "dtype": label,
                  "quant": quant, "batch": batch, "block": block,
                  "threads": n, "step_s_median": med, "tokens_per_s": statistics.median(toks) / med,
                  "peak_rss_bytes": max(peak, summ["peak_rss_bytes"] if summ else 0),
                  "first_loss": None, "last_loss": None}))
EOF
}

minilm() {
  local rep=${REPEAT_MINILM:-1}
  for ((i = 0; i < rep; i++)); do
    local d=$OUT/minilm_lorafit dt
    for dt in $DTYPES; do
    read -r wall peak < <(run_timed "$OUT/minilm_lorafit.log" "$LORAFIT" train --model models/all-MiniLM-L6-v2 \
      --train data/sst2/train.tsv --validation data/sst2/dev.tsv --output "$d" --overwrite \
      --max-steps "$MAX_STEPS" --lora-dropout 0 --threads "$N" --log-every 50 --compute-dtype "$dt")
    "$PY" - "$d" "$wall" "$peak" "$N" "$dt" >>"$RES" <<'EOF'
import json, sys
d, wall, peak, n, dt = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
summ, ev = None, None
for line in open(d + "/log.jsonl"):
    r = json.loads(line)
    if r.get("type") == "summary": summ = r
    if r.get("type") == "eval": ev = r
acc = None
for k in ("accuracy", "eval_accuracy"):
    if ev and k in ev: acc = ev[k]
    if ev and isinstance(ev.get("eval"), dict) and k in ev["eval"]: acc = ev["eval"][k]
print(json.dumps({"side": "lorafit", "workload": "minilm", "sampler": "lorafit", "method": "lora",
                  "dtype": dt, "threads": n, "train_s": summ["seconds"], "wall_s": wall, "dev_accuracy": acc,
                  "peak_rss_bytes": max(peak, summ["peak_rss_bytes"])}))
EOF
    done
    for s in default group_by_length; do
      "$PY" bench/torch_train.py minilm --threads "$N" --sampler "$s" --max-steps "$MAX_STEPS" \
        --out "$OUT/minilm_torch" 2>"$OUT/torch.err" >>"$RES" || { cat "$OUT/torch.err" >&2; exit 1; }
    done
  done
}

SMOL=""
smol_folder() {
  [ -n "$SMOL" ] && return
  SMOL=$("$PY" tools/make_smollm2_hf.py --out runs/smollm2-f32 2>"$OUT/make_hf.err" | tail -n 1) ||
    { cat "$OUT/make_hf.err" >&2; exit 1; }
}

lm() {  # lm METHOD QUANT
  local method=$1 quant=$2 extra=()
  smol_folder
  [ "$method" = dora ] && extra+=(--use-dora)
  if [ "$quant" = nf4 ]; then extra+=(--quantize nf4-dq); fi
  for ((i = 0; i < REPEAT; i++)); do
    local d=$OUT/lm_lorafit dt
    for dt in $DTYPES; do
      read -r wall peak < <(run_timed "$OUT/lm_lorafit.log" "$LORAFIT" train --model "$SMOL" \
        --train data/tinyshakespeare/input.txt --output "$d" --overwrite --block-size "$BLOCK" --batch-size "$BATCH" \
        --target-modules all-linear --lora-dropout 0 --max-steps $((WARMUP + STEPS + 1)) --log-every 1 \
        --eval-max-batches 1 --threads "$N" --compute-dtype "$dt" "${extra[@]}")
      lorafit_lm_json "$d" "$dt" "$method" "$peak" "$quant" >>"$RES"
    done
    for dt in fp32 bf16; do
      "$PY" bench/torch_train.py lm --model "$SMOL" --threads "$N" --method "$method" --dtype "$dt" \
        --quant "$quant" --steps "$STEPS" --warmup "$WARMUP" --batch "$BATCH" --block "$BLOCK" \
        2>"$OUT/torch.err" >>"$RES" ||
        { cat "$OUT/torch.err" >&2; exit 1; }
    done
  done
}

gemm() {
  [ -x build/bench_step_gemm ] || { echo "side_by_side: build/bench_step_gemm not built (LORAFIT_BUILD_BENCH)" >&2; return; }
  smol_folder
  # SmolLM2's shapes from its config, at BATCH x BLOCK tokens; MiniLM's (BERT: a two-matrix MLP, no LM
  # head) at 32 x 64 tokens, about an SST-2 batch padded to its longest.
  read -r h f nh nkv L v < <("$PY" -c '
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
print(c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
      c.get("num_key_value_heads", c["num_attention_heads"]), c["num_hidden_layers"], c["vocab_size"])' "$SMOL")
  build/bench_step_gemm --name smollm2 --hidden "$h" --intermediate "$f" --heads "$nh" --kv-heads "$nkv" \
    --layers "$L" --vocab "$v" --tokens $((BATCH * BLOCK)) --threads "$N" --reps "${GEMM_REPS:-5}" >>"$RES"
  build/bench_step_gemm --name minilm --hidden 384 --intermediate 1536 --heads 12 --kv-heads 12 \
    --layers 6 --vocab 0 --mlp 2 --tokens 2048 --threads "$N" --reps "${GEMM_REPS:-5}" >>"$RES"
}

for w in "${WORKLOADS[@]}"; do
  case $w in
    minilm) minilm ;;
    smollm2) lm lora none ;;
    dora) lm dora none ;;
    nf4) lm lora nf4 ;;
    gemm) gemm ;;
    *) echo "side_by_side: unknown workload '$w' (minilm smollm2 dora nf4 gemm)" >&2; exit 2 ;;
  esac
done
"$PY" bench/side_by_side_table.py "$RES" --config "${SMOL:-runs/smollm2-f32}/config.json"
