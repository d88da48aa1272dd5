#!/usr/bin/env bash
# The CLI under bad use (issue 14): every command with missing, unknown, repeated or
# contradictory flags, wrong file kinds, an empty, read-only or full output location. Each case
# asserts the exit code and the message text (stderr), and that nothing is left half-written.
# The catalogue in docs/ROBUSTNESS.md lists these cases.
#   tests/scripts/cli_bad_use_test.sh LORAFIT_BINARY SOURCE_DIR
set -uo pipefail
BIN=$(realpath "$1"); SRC=$(realpath "$2")
F="$SRC/tests/fixtures"
W=$(mktemp -d /tmp/lorafit_bad_use.XXXXXX)
trap 'chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"' EXIT
cd "$W"

pass=0; failed=0
# case NAME RC NEEDLE... -- COMMAND...: runs COMMAND, wants exit code RC and every NEEDLE in its
# stderr (stdout too, for a usage text). The previous case's stderr stays in last_err.txt.
case_() {
  local name=$1 rc=$2; shift 2
  local needles=()
  while [ "$1" != "--" ]; do needles+=("$1"); shift; done
  shift
  "$@" >out.txt 2>err.txt </dev/null
  local got=$?
  cp err.txt last_err.txt
  local ok=1
  if [ "$got" != "$rc" ]; then
    echo "FAIL $name: exit $got, expected $rc"; ok=0
  fi
  for n in "${needles[@]}"; do
    if ! grep -qF -- "$n" err.txt out.txt; then
      echo "FAIL $name: '$n' not in the output"; ok=0
    fi
  done
  # CATALOGUE=1: print each case's message (docs/ROBUSTNESS.md is made from it).
  [ -n "${CATALOGUE:-}" ] && printf '%s\t%s\t%s\n' "$name" "$got" "$(grep -v '^$' err.txt | head -1)"
  if [ $ok = 1 ]; then pass=$((pass + 1)); else
    failed=$((failed + 1)); echo "  command: $*"; sed 's/^/  stderr: /' err.txt | head -5
  fi
}
# no_leftovers NAME DIR: no temporary (*.tmp.*, *.old.*) entry under DIR.
no_leftovers() {
  local left
  left=$(find "$2" -name '*.tmp.*' -o -name '*.old.*' 2>/dev/null | head -3)
  if [ -n "$left" ]; then echo "FAIL $1: left behind: $left"; failed=$((failed + 1)); else pass=$((pass + 1)); fi
}
absent() {  # absent NAME PATH
  if [ -e "$2" ]; then echo "FAIL $1: $2 exists (half-written output)"; failed=$((failed + 1)); else pass=$((pass + 1)); fi
}

# ---- fixtures: the tiny BERT and Llama with their tokenizers, data, one trained adapter ----------
mkdir -p bert llama out
cp "$F"/models/tiny_bert/* bert/
cp "$F/tokens/tiny_bert_wordpiece/tokenizer.json" bert/
cp "$F"/models/tiny_llama/config.json "$F"/models/tiny_llama/model.safetensors llama/
cp "$F"/tokens/tiny_llama_bpe/* llama/
printf 'label\tsentence\n' > train.tsv
for i in $(seq 1 24); do printf '1\tgood film %d\n0\tbad plot %d\n' "$i" "$i" >> train.tsv; done
for i in $(seq 1 40); do echo "the movie was very fine and fun, not dull at all."; done > train.txt
echo "just some words" > notes.txt
"$BIN" train --model bert --train train.tsv --output run --max-steps 2 --batch-size 8 --quiet \
  --threads 1 >/dev/null 2>&1 || { echo "FAIL setup: training the adapter"; exit 1; }
ADAPTER=run/final

# ---- the command itself --------------------------------------------------------------------------
case_ no-command 1 "Usage: lorafit <command>" -- "$BIN"
case_ unknown-command 2 "lorafit: unknown command 'trian' (try lorafit --help)" -- "$BIN" trian

# ---- unknown options (with the suggestion when one is close) ------------------------------------
case_ train-unknown 1 "lorafit train: [train] unknown option --lr-rate (did you mean --lr?); see lorafit train --help" -- \
  "$BIN" train --model bert --train train.tsv --output o --lr-rate 1
case_ train-unknown-single-dash 1 "unknown option --x" -- "$BIN" train -x
case_ eval-unknown 1 "lorafit eval: [eval] unknown option --bogus; see lorafit eval --help" -- "$BIN" eval --bogus 1
case_ predict-unknown 1 "lorafit predict: [predict] unknown option --bogus" -- "$BIN" predict --bogus 1
case_ generate-unknown 1 "lorafit generate: [generate] unknown option --bogus" -- "$BIN" generate --bogus 1
case_ logits-unknown 1 "lorafit logits: [logits] unknown option --bogus" -- "$BIN" logits --bogus 1
case_ analyze-unknown 1 "[analyze] unknown option --bogus" -- "$BIN" analyze --bogus 1
case_ adapter-unknown-sub 2 "lorafit adapter: unknown subcommand 'frob'" -- "$BIN" adapter frob
case_ adapter-unknown-sub-args 2 "lorafit adapter: unknown subcommand 'frob'" -- "$BIN" adapter frob x
case_ adapter-merge-unknown 1 "lorafit adapter merge: [adapter merge] unknown option --bogus" -- \
  "$BIN" adapter merge "$ADAPTER" --bogus 1
case_ config-unknown-key 1 "cfg.yaml: key 'lora-rank'" "did you mean --lora-r?" -- \
  bash -c "printf 'lora_rank: 4\n' > cfg.yaml; '$BIN' train --config cfg.yaml"

# ---- missing options and values -----------------------------------------------------------------
case_ train-no-model 1 "lorafit train: [train] --model is required" -- "$BIN" train
case_ train-no-train 1 "[train] --train is required" -- "$BIN" train --model bert --output o
case_ train-no-output 1 "[train] --output is required" -- "$BIN" train --model bert --train train.tsv
case_ train-needs-value 1 "[train] --model needs a value" -- "$BIN" train --model
case_ eval-no-data 1 "lorafit eval: [eval] --data is required" -- "$BIN" eval --model bert
case_ predict-no-data 1 "lorafit predict: [predict] --data is required" -- "$BIN" predict --model bert
case_ generate-no-prompt 1 "lorafit generate: [generate] --prompt is required" -- "$BIN" generate --model llama
case_ logits-no-model 1 "lorafit logits: [logits] --model is required" -- "$BIN" logits --prompt hi
case_ logits-no-prompt 1 "[logits] give at least one --prompt" -- "$BIN" logits --model llama
case_ info-no-path 2 "Usage: lorafit info PATH" -- "$BIN" info
case_ adapter-merge-no-dir 2 "lorafit adapter merge: expected an adapter folder" -- "$BIN" adapter merge
case_ adapter-merge-no-base 2 "lorafit adapter merge: --base and --out are required" -- "$BIN" adapter merge "$ADAPTER"
case_ adapter-combine-no-weights 2 "lorafit adapter combine: --base, --weights and --out are required" -- \
  "$BIN" adapter combine "$ADAPTER" "$ADAPTER" --base bert --out o
case_ report-no-run 1 "lorafit report: no RUN_DIR given" -- "$BIN" report
case_ analyze-no-base 2 "lorafit analyze: --base, --result and --out are required" -- "$BIN" analyze --out o

# ---- repeated options -------------------------------------------------------------------------
case_ train-repeated 1 "lorafit train: [train] --lr is given 2 times ('1e-3', '2e-3'); give it once" -- \
  "$BIN" train --model bert --train train.tsv --output o --lr 1e-3 --lr 2e-3
case_ train-repeated-flag 1 "[train] --quiet is given 2 times" -- "$BIN" train --quiet --quiet
case_ eval-repeated 1 "[eval] --data is given 2 times ('a.tsv', 'b.tsv')" -- "$BIN" eval --data a.tsv --data b.tsv
case_ generate-repeated 1 "[generate] --prompt is given 2 times" -- "$BIN" generate --prompt a --prompt b
case_ merge-repeated 1 "[adapter merge] --out is given 2 times" -- "$BIN" adapter merge "$ADAPTER" --out a --out b
case_ logits-adapter-name-twice 1 "[logits] adapter name 'x' given twice" -- \
  "$BIN" logits --model bert --num-labels 2 --prompt hi --adapter "x=$ADAPTER" --adapter "x=$ADAPTER"

# ---- malformed and contradictory values -------------------------------------------------------
case_ train-int 1 "[train] --threads: expected an integer, got 'many'" -- "$BIN" train --threads many
case_ train-num 1 "[train] --lr: expected a number, got 'fast'" -- "$BIN" train --lr fast
case_ train-bool 1 "[train] --overwrite: expected true or false, got 'maybe'" -- "$BIN" train --overwrite=maybe
case_ train-method 1 "[train] --method 'lorax': expected lora, adalora, full or head" -- \
  "$BIN" train --model bert --train train.tsv --output o --method lorax
case_ train-adalora-only 1 "[train] --init-r applies to --method adalora only (method is lora)" -- \
  "$BIN" train --model bert --train train.tsv --output o --init-r 4
case_ train-full-lora 1 "[train] --train-modules applies to --method full only" -- \
  "$BIN" train --model bert --train train.tsv --output o --train-modules query
case_ train-lr 1 "[train] --lr must be positive" -- "$BIN" train --model bert --train train.tsv --output o --lr -1
case_ train-val-fraction 1 "[train] --val-fraction 1.500000: expected a fraction in [0, 1) (0: no validation)" -- \
  "$BIN" train --model llama --train train.txt --output o --val-fraction 1.5
# --val-fraction 0 is not bad use: the whole text trains, no validation pass (a LongLoRA run on
# its own held-out file); it once failed with "no text (empty file or range)" for the empty tail
case_ train-val-fraction-0 0 -- "$BIN" train --model llama --train train.txt --output vf0 \
  --max-steps 1 --block-size 16 --batch-size 2 --val-fraction 0 --quiet
if [ -f vf0/final/adapter_model.safetensors ] && ! grep -q '"type": *"eval"' vf0/log.jsonl 2>/dev/null; then
  pass=$((pass + 1)); else echo "FAIL train-val-fraction-0: no final adapter, or an eval was logged"; failed=$((failed + 1)); fi
case_ train-head-lm 1 "[train] --method head needs a classification task" -- \
  "$BIN" train --model llama --train train.txt --output o --method head
case_ train-lm-bert 1 "[train] task lm needs a Llama-family model" -- \
  "$BIN" train --model bert --train train.txt --output o --task lm
case_ train-max-length 1 "beyond max_position_embeddings 64" "use --max-length 64 or less" -- \
  bash -c "printf 'label\tsentence\n1\t%s\n0\tbad\n1\tgood\n' \"\$(for i in \$(seq 90); do printf 'good '; done)\" > long.tsv;
           '$BIN' train --model bert --train long.tsv --output o --max-length 200 --val-fraction 0.3 --quiet"
case_ generate-system 1 "[generate] --system and --chat-template need --chat" -- \
  "$BIN" generate --model llama --prompt hi --system "be brief"
case_ logits-route 1 "[logits] --route needs --adapter NAME=DIR adapters" -- \
  "$BIN" logits --model bert --prompt hi --route a

# ---- wrong file kinds -------------------------------------------------------------------------
case_ adapter-is-gguf 1 "[adapter] $F/models/tiny_llama.gguf: neither adapter_config.json nor trainable.safetensors; give a PEFT adapter folder" -- \
  "$BIN" eval --model llama --adapter "$F/models/tiny_llama.gguf" --data train.txt
case_ adapter-is-file 1 "lorafit adapter info: [peft] notes.txt: no adapter_config.json" -- "$BIN" adapter info notes.txt
mkdir -p folder.tsv folder.txt
case_ train-is-folder 1 "[data] $W/bert: is a folder, expected a file" -- \
  "$BIN" train --model bert --train "$W/bert" --output o
case_ train-is-folder-tsv 1 "lorafit train: [data] folder.tsv: is a folder, expected a file" -- \
  "$BIN" train --model bert --train folder.tsv --output o
case_ train-is-folder-txt 1 "lorafit train: [io] folder.txt: is a folder, expected a file" -- \
  "$BIN" train --model llama --train folder.txt --output o
case_ eval-data-is-folder 1 "lorafit eval: [data] folder.tsv: is a folder, expected a file" -- \
  "$BIN" eval --model bert --adapter "$ADAPTER" --data folder.tsv
case_ model-is-text 1 "[models] notes.txt: not a model: expected a .gguf file or a Hugging Face model folder (config.json + model.safetensors)" -- \
  "$BIN" info notes.txt
case_ model-is-safetensors 1 "[models] bert/model.safetensors: not a model" "give the folder that holds it" -- \
  "$BIN" info bert/model.safetensors
case_ model-is-text-train 1 "lorafit train: [models] notes.txt: not a model" -- \
  "$BIN" train --model notes.txt --train train.tsv --output o
case_ model-is-text-eval 1 "lorafit eval: [models] notes.txt: not a model" -- "$BIN" eval --model notes.txt --data train.tsv
case_ model-is-empty-folder 1 "[model] $W/out: no config.json and 0 .gguf files; give a model folder or one .gguf file" -- \
  "$BIN" info "$W/out"
case_ model-missing 1 "[model] nope: not found" -- "$BIN" info nope
case_ config-is-safetensors 1 "[json] bert/model.safetensors: line 1, column 1: syntax error" "last read: '\\x" -- \
  "$BIN" train --config bert/model.safetensors
# A binary file's bytes never reach the terminal raw.
case_ config-is-safetensors-printable 0 -- bash -c "test -s last_err.txt && ! LC_ALL=C grep -q '[^[:print:][:space:]]' last_err.txt"
case_ train-data-is-gguf 1 "[data] $F/models/tiny_llama.gguf: unknown extension; expected .tsv, .csv or .jsonl" -- \
  "$BIN" train --model bert --train "$F/models/tiny_llama.gguf" --output o
case_ tokenizer-missing 1 "lorafit train: [text] notok/tokenizer.json: tokenizer file not found" -- \
  bash -c "mkdir -p notok; cp bert/config.json bert/model.safetensors notok/; '$BIN' train --model notok --train train.tsv --output o"

# ---- output locations -------------------------------------------------------------------------
case_ output-exists 1 "[train] output folder run exists and is not empty; pass --overwrite" -- \
  "$BIN" train --model bert --train train.tsv --output run --max-steps 1
case_ output-empty 1 "[train] --output is required" -- "$BIN" train --model bert --train train.tsv --output ""
case_ output-is-file 1 "[train] output notes.txt exists and is not a folder; give a folder for --output" -- \
  "$BIN" train --model bert --train train.tsv --output notes.txt --max-steps 1 --quiet --overwrite
# Read-only: a location no one can write, root included (/proc), and a mode-0555 folder for a
# non-root user.
case_ output-read-only 1 "lorafit train: [train] output folder /proc/lorafit_out: cannot create: " -- \
  "$BIN" train --model bert --train train.tsv --output /proc/lorafit_out --max-steps 1 --quiet
absent output-read-only-nothing /proc/lorafit_out
if [ "$(id -u)" != 0 ]; then
  mkdir ro && chmod 555 ro
  case_ output-read-only-folder 1 "ro/run" "Permission denied" -- \
    "$BIN" train --model bert --train train.tsv --output ro/run --max-steps 1 --quiet
  chmod 755 ro
  absent output-read-only-folder-nothing ro/run
fi
case_ merge-read-only 1 "lorafit adapter merge: [io] /proc/lorafit_merged: cannot create folder /proc/lorafit_merged.tmp." -- "$BIN" adapter merge "$ADAPTER" --base bert --out /proc/lorafit_merged
case_ predict-read-only 1 "lorafit predict: [io] /proc/lorafit_pred.tsv: cannot create /proc/lorafit_pred.tsv.tmp." -- \
  "$BIN" predict --model bert --adapter "$ADAPTER" --data train.tsv --output /proc/lorafit_pred.tsv
# A full disk: a file-size limit of 16 KiB (ulimit -f, unprivileged) makes the adapter's write fail
# with EFBIG as ENOSPC would; the message names the file and nothing is left behind.
case_ train-disk-full 1 "lorafit train: [io] full/run/" "File too large" -- \
  bash -c "ulimit -f 16; exec '$BIN' train --model bert --train train.tsv --output full/run --max-steps 2 --batch-size 8 --quiet --threads 1"
# The run folder holds its log (complete lines) and no checkpoint/ or final/.
absent train-disk-full-no-checkpoint full/run/checkpoint
absent train-disk-full-no-final full/run/final
case_ train-disk-full-log-parses 0 -- python3 -c "import json,sys; [json.loads(l) for l in open('full/run/log.jsonl')]"
no_leftovers train-disk-full-no-temp full
case_ merge-disk-full 1 "lorafit adapter merge: [io] full/merged.tmp." "write failed after" "File too large" -- \
  bash -c "ulimit -f 16; exec '$BIN' adapter merge '$ADAPTER' --base bert --out full/merged"
absent merge-disk-full-no-folder full/merged
no_leftovers merge-disk-full-no-temp full
no_leftovers all-cases "$W"

echo "$pass checks passed, $failed failed"
[ "$failed" = 0 ]
