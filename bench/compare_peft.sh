#!/usr/bin/env bash
# Side by side, in one run: one MiniLM training step (batch 32 x 64, r=8 on query/value) in lorafit
# (build/bench_dora, BM_MiniLMStep) and in PyTorch + PEFT (bench/peft_step.py), LoRA and DoRA, with
# and without dropout, on the same number of threads. Each configuration runs in its own process so
# that peak RSS is its own.
#   bash bench/compare_peft.sh [THREADS]     (needs build/bench_dora and tools/.venv: tools/pyenv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1}
export OMP_NUM_THREADS=$N OPENBLAS_NUM_THREADS=$N LORAFIT_THREADS=$N
PY=$(bash tools/pyenv.sh | tail -1)
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONWARNINGS=ignore TQDM_DISABLE=1
echo "== $(date -u "+%F %H:%M UTC")  $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)  threads=$N"
for d in 0 10; do
  for m in 0 1; do
    ./build/bench_dora --benchmark_min_warmup_time=2 --benchmark_min_time=6 --benchmark_filter="^BM_MiniLMStep/method:$m/dropout:$d/" 2>/dev/null | grep -E '^BM_'
  done
  for m in lora dora; do
    # transformers' load report goes to stderr: shown only if the step fails
    "$PY" bench/peft_step.py --method $m --dropout "$(python3 -c "print($d/100)")" --threads "$N" \
      2>"${TMPDIR:-/tmp}/peft_step.err" || { cat "${TMPDIR:-/tmp}/peft_step.err" >&2; exit 1; }
  done
done
