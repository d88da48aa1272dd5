#!/usr/bin/env bash
# Crash safety: kills a tiny training run (tiny BERT fixture, --save-every 1) with SIGKILL at random
# moments, KILLS times in all. After every kill the run folder's checkpoint/, best/ and final/ must
# each be absent or complete (every JSON parses, every safetensors file's header matches its
# size), the checkpoint's step never goes back, and --resume from whatever is there must end at
# the same final adapter, byte for byte, as an uninterrupted run.
#   tests/scripts/kill_test.sh LORAFIT_BINARY SOURCE_DIR [KILLS=200] [SEED=1]
set -euo pipefail
BIN=$1; SRC=$2; KILLS=${3:-200}; SEED=${4:-1}
W=$(mktemp -d /tmp/lorafit_kill.XXXXXX)
trap 'rm -rf "$W"' EXIT
cp -r "$SRC/tests/fixtures/models/tiny_bert" "$W/m"
cp "$SRC/tests/fixtures/tokens/tiny_bert_wordpiece/tokenizer.json" "$W/m/"
python3 - "$W" <<'PY'
import random, sys
d = sys.argv[1]
w = ["good","bad","great","awful","movie","film","plot","fine","dull","fun","the","a","is","was","very","not"]
r = random.Random(1)
with open(d + "/train.tsv", "w") as f:
    f.write("label\tsentence\n")
    for i in range(48):
        p = r.random() < .5
        f.write("%d\t%s %s\n" % (p, r.choice(["good", "great"] if p else ["bad", "awful"]),
                                 " ".join(r.choice(w[6:]) for _ in range(4))))
PY
# Validates the folders of a run; prints the checkpoint step (-1: none). Fails on a torn file.
cat > "$W/check.py" <<'PY'
import json, os, struct, sys
run = sys.argv[1]
def check_folder(d):
    names = os.listdir(d)
    for need in ("adapter_config.json", "adapter_model.safetensors"):
        if need not in names: sys.exit("%s: %s missing (half-written folder)" % (d, need))
    for n in names:
        p = os.path.join(d, n)
        if n.endswith(".json"):
            try: json.load(open(p))
            except Exception as e: sys.exit("%s: torn JSON: %s" % (p, e))
        elif n.endswith(".safetensors"):
            b = open(p, "rb").read()
            if len(b) < 8: sys.exit("%s: torn safetensors (%d bytes)" % (p, len(b)))
            (hl,) = struct.unpack("<Q", b[:8])
            try: h = json.loads(b[8:8 + hl])
            except Exception as e: sys.exit("%s: torn safetensors header: %s" % (p, e))
            end = max([v["data_offsets"][1] for k, v in h.items() if k != "__metadata__"] + [0])
            if 8 + hl + end != len(b): sys.exit("%s: torn safetensors: %d bytes, header says %d" % (p, len(b), 8 + hl + end))
step = -1
for sub in ("checkpoint", "best", "final"):
    d = os.path.join(run, sub)
    if os.path.isdir(d): check_folder(d)
ck = os.path.join(run, "checkpoint", "trainer_state.json")
if os.path.isdir(os.path.join(run, "checkpoint")):
    if not os.path.exists(ck): sys.exit("%s missing" % ck)
    step = int(json.load(open(ck)).get("global_step", json.load(open(ck)).get("step", 0)))
print(step)
PY
ARGS=(train --model "$W/m" --train "$W/train.tsv" --max-steps 6 --batch-size 8 --threads 1 --lr 1e-2 --save-every 1)
"$BIN" "${ARGS[@]}" --output "$W/ref" >/dev/null 2>&1
# Run time of one uninterrupted run sets the range of kill moments.
t0=$(date +%s%N); "$BIN" "${ARGS[@]}" --output "$W/ref2" >/dev/null 2>&1; t1=$(date +%s%N)
span_ms=$(( (t1 - t0) / 1000000 + 50 ))
cmp "$W/ref/final/trainable.safetensors" "$W/ref2/final/trainable.safetensors"
RANDOM=$SEED
kills=0; trials=0; resumed=0
while [ $kills -lt "$KILLS" ]; do
  trials=$((trials + 1))
  out="$W/run$trials"; last=-1
  while :; do
    # Killed before the first checkpoint: lorafit refuses to write into the non-empty folder
    # unless told (--overwrite), which is what a user does then.
    extra=(); [ -d "$out" ] && extra=(--overwrite)
    [ -d "$out/checkpoint" ] && extra=(--resume "$out/checkpoint") && resumed=$((resumed + 1))
    "$BIN" "${ARGS[@]}" --output "$out" "${extra[@]}" >"$W/log" 2>&1 &
    pid=$!
    sleep "$(printf '0.%03d' $((RANDOM % span_ms % 1000)))"
    kill -9 $pid 2>/dev/null || true
    rc=0; { wait $pid; } 2>/dev/null || rc=$?
    [ $rc -eq 137 ] && kills=$((kills + 1))  # a run that had already ended is not a kill
    step=$(python3 "$W/check.py" "$out") || { echo "FAIL after kill $kills (trial $trials):"; exit 1; }
    if [ "$step" -lt "$last" ]; then echo "FAIL: checkpoint step went back from $last to $step"; exit 1; fi
    last=$step
    if [ $rc -eq 0 ]; then break; fi
    if [ $rc -ne 137 ]; then echo "FAIL: run exited $rc (not killed):"; cat "$W/log"; exit 1; fi
  done
  cmp "$W/ref/final/trainable.safetensors" "$out/final/trainable.safetensors" ||
    { echo "FAIL: trial $trials: resumed final adapter differs from the uninterrupted run"; exit 1; }
  rm -rf "$out"
done
echo "kill test: $kills SIGKILLs over $trials runs ($resumed resumes), every folder complete, every final adapter identical"
