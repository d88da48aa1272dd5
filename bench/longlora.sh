#!/usr/bin/env bash
# LongLoRA on SmolLM2-135M (issue 12's "done when"): extend the context from 8,192 to 16,384
# tokens with --rope-scaling linear:2 and train S²-Attn LoRA (q,k,v,o; embeddings and norms
# trainable) on Tiny Shakespeare (last 10% held out); held-out perplexity at 16,384 and 8,192
# before (scaling only) and after; peak RSS and time of one 16,384-token step with and without
# recomputation, full attention vs S²-Attn.
#
#   bash bench/longlora.sh [steps]      (default 20 training steps; env LORAFIT, MODEL, OUT)
#   PART=mem bash bench/longlora.sh     (only the one-step peak RSS table)
#   PART=ppl bash bench/longlora.sh     (only the perplexities and the training run)
#   env CASES ("s2:ckpt s2: full:ckpt full:"): the one-step cases of PART=mem, ATTENTION:[ckpt]
#   env BEFORE=0: skip the evaluations before training (already measured)
#   env LR (5e-4), WARMUP (1), BLOCK (16384), NOCKPT_BLOCK (= BLOCK): the block size of the
#   one-step cases without recomputation. Without it a step keeps every layer's activations, about
#   20 GiB at 16,384 tokens on SmolLM2-135M, so on a 24 GiB machine measure it at 4096 or 8192.
#
# Heavy: each 16k step is several minutes on 2 cores; without recomputation a step keeps every
# layer's activations (run that case only on a machine with the memory). Numbers go to
# docs/RESULTS.md with this command, the CPU and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
LORAFIT=${LORAFIT:-build/lorafit}
MODEL=${MODEL:-$(ls models/SmolLM2-135M-Instruct/*.gguf | head -n 1)}
OUT=${OUT:-runs/longlora}
PART=${PART:-all}
THREADS=${THREADS:-0}
LR=${LR:-5e-4}
WARMUP=${WARMUP:-1}
BLOCK=${BLOCK:-16384}
NOCKPT_BLOCK=${NOCKPT_BLOCK:-$BLOCK}
CASES=${CASES:-s2:ckpt s2: full:ckpt full:}
mkdir -p "$OUT"
SRC=data/tinyshakespeare/input.txt
[ -f "$SRC" ] || { echo "longlora.sh: $SRC missing (bash tools/fetch_data.sh)" >&2; exit 1; }
# last 10% of the bytes held out, cut at a line start
BYTES=$(stat -c %s "$SRC")
CUT=$(head -c $((BYTES * 9 / 10)) "$SRC" | wc -l)
head -n "$CUT" "$SRC" > "$OUT/train.txt"
tail -n +"$((CUT + 1))" "$SRC" > "$OUT/heldout.txt"

COMMON="--model $MODEL --threads $THREADS"
TRAIN="$LORAFIT train $COMMON --train $OUT/train.txt --batch-size 1 \
  --rope-scaling linear:2 --target-modules q_proj,k_proj,v_proj,o_proj --trainable-extra embed,norm \
  --lora-r 8 --lora-alpha 16 --lr $LR --warmup-steps $WARMUP --val-fraction 0 --quiet"

echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
if [ "$PART" = all ] || [ "$PART" = mem ]; then
  echo "## one training step: peak RSS (GiB) and wall time (s)"
  for att in s2 full; do
    for ckpt in "--gradient-checkpointing" ""; do
      case " $CASES " in *" $att:${ckpt:+ckpt} "*) ;; *) continue ;; esac
      bs=$BLOCK; [ -n "$ckpt" ] || bs=$NOCKPT_BLOCK
      d="$OUT/step_${att}${ckpt:+_ckpt}_$bs"
      rm -rf "$d"
      /usr/bin/time -f "%M %e" -o "$d.time" $TRAIN --block-size "$bs" --attention "$att" $ckpt \
        --max-steps 1 --output "$d" > "$d.log" 2>&1 || echo "  (failed: see $d.log)"
      read -r kb secs < "$d.time" || true
      printf "  block %5s attention %-4s recompute %-3s peak %.2f GiB  %s s\n" "$bs" "$att" \
        "$([ -n "$ckpt" ] && echo on || echo off)" "$(echo "${kb:-0} / 1048576" | bc -l)" "${secs:-?}"
    done
  done
fi
if [ "$PART" = all ] || [ "$PART" = ppl ]; then
  echo "## held-out perplexity"
  if [ "${BEFORE:-1}" = 1 ]; then
  $LORAFIT eval $COMMON --data "$OUT/heldout.txt" --block-size $((BLOCK / 2)) --batch-size 1 \
    | sed "s/^/  base (no scaling), block $((BLOCK / 2)): /"
  for bs in $BLOCK $((BLOCK / 2)); do
    $LORAFIT eval $COMMON --data "$OUT/heldout.txt" --block-size $bs --batch-size 1 \
      --rope-scaling linear:2 | sed "s/^/  before (linear:2 only), block $bs: /"
  done
  fi
  rm -rf "$OUT/train"
  /usr/bin/time -f "%M %e" -o "$OUT/train.time" $TRAIN --block-size "$BLOCK" --attention s2 \
    --gradient-checkpointing --log-every 1 \
    --max-steps "$STEPS" --output "$OUT/train" > "$OUT/train.log" 2>&1
  read -r kb secs < "$OUT/train.time"
  printf "  training: %s steps, %.1f s/step, peak %.2f GiB\n" "$STEPS" \
    "$(echo "$secs / $STEPS" | bc -l)" "$(echo "$kb / 1048576" | bc -l)"
  for bs in $BLOCK $((BLOCK / 2)); do
    $LORAFIT eval $COMMON --adapter "$OUT/train/final" --data "$OUT/heldout.txt" \
      --block-size $bs --batch-size 1 | sed "s/^/  after, block $bs: /"
  done
fi
