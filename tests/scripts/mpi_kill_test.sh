#!/usr/bin/env bash
# A data-parallel run whose rank 1 is killed (SIGKILL) ends within 60 s with an error naming
# rank 1, the last checkpoint stays intact and --resume continues from it. A rank that hangs
# (SIGSTOP) ends the job after LORAFIT_MPI_TIMEOUT seconds with lorafit's own error.
#   mpi_kill_test.sh SOURCE_DIR LORAFIT MPIRUN
set -euo pipefail
SRC=$1 BIN=$2 MPIRUN=$3
source "$SRC/tests/scripts/mpi_common.sh"
W=$(mktemp -d /tmp/lorafit_mpi_kill.XXXXXX)
trap 'rm -rf "$W"' EXIT
mpi_fixture "$SRC" "$W"
MPI=("$MPIRUN" -np 2 --oversubscribe --allow-run-as-root --mca btl_vader_single_copy_mechanism none)
ARGS=(train --model "$W/tb" --train "$W/train.tsv" --batch-size 8 --lora-dropout 0 --eval-every 0
      --max-steps 20000 --save-every 25 --quiet --output "$W/out")

# The pid of rank $1 of the run writing to $W/out (mpirun forks the local ranks).
rank_pid() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -q -- "--output $W/out" || continue
    tr '\0' '\n' 2>/dev/null < "$p/environ" | grep -qx "OMPI_COMM_WORLD_RANK=$1" || continue
    basename "$p"
    return 0
  done
  return 1
}
wait_for_checkpoint() {
  for _ in $(seq 600); do
    [ -f "$W/out/checkpoint/trainer_state.json" ] && return 0
    sleep 0.1
  done
  fail "no checkpoint after 60 s: $(cat "$W/log")"
}

# ---- a killed rank
"${MPI[@]}" "$BIN" "${ARGS[@]}" > "$W/log" 2>&1 &
MP=$!
wait_for_checkpoint
sleep 0.3
R1=$(rank_pid 1) || fail "rank 1 not found"
kill -9 "$R1"
T0=$(date +%s)
set +e
wait "$MP"
RC=$?
set -e
DT=$(( $(date +%s) - T0 ))
echo "killed rank 1: mpirun exit $RC after ${DT} s"
[ "$RC" -ne 0 ] || fail "the job exited 0 after rank 1 was killed"
[ "$DT" -le 60 ] || fail "the job took ${DT} s to stop"
grep -Eq "process rank 1 with PID .* exited on signal 9" "$W/log" || fail "the error does not name rank 1: $(cat "$W/log")"
STEP=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$W/out/checkpoint/trainer_state.json")
[ $((STEP % 25)) -eq 0 ] && [ "$STEP" -gt 0 ] || fail "checkpoint step $STEP is not a save point"
for f in trainable.safetensors optimizer.safetensors adapter_model.safetensors adapter_config.json; do
  [ -s "$W/out/checkpoint/$f" ] || fail "checkpoint lacks $f"
done
echo "checkpoint intact at step $STEP"

# ---- --resume continues (2 processes, 3 more steps, then saves and stops: exit 130)
set +e
"${MPI[@]}" "$BIN" "${ARGS[@]}" --resume "$W/out/checkpoint" --stop-after 3 > "$W/log2" 2>&1
RC=$?
set -e
[ "$RC" -eq 130 ] || fail "resume exited $RC: $(cat "$W/log2")"
STEP2=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$W/out/checkpoint/trainer_state.json")
[ "$STEP2" -eq $((STEP + 3)) ] || fail "resumed to step $STEP2, expected $((STEP + 3))"
echo "resumed: step $STEP -> $STEP2"

# ---- a hung rank: the others stop after LORAFIT_MPI_TIMEOUT
rm -rf "$W/out"
LORAFIT_MPI_TIMEOUT=3 "${MPI[@]}" -x LORAFIT_MPI_TIMEOUT "$BIN" "${ARGS[@]}" > "$W/log" 2>&1 &
MP=$!
wait_for_checkpoint
R1=$(rank_pid 1) || fail "rank 1 not found"
kill -STOP "$R1"
T0=$(date +%s)
set +e
wait "$MP"
RC=$?
set -e
DT=$(( $(date +%s) - T0 ))
kill -9 "$R1" 2>/dev/null || true
echo "stopped rank 1: mpirun exit $RC after ${DT} s"
[ "$RC" -ne 0 ] || fail "the job exited 0 with rank 1 stopped"
[ "$DT" -le 60 ] || fail "the job took ${DT} s to stop"
grep -q "rank 0 of 2: the gradient all-reduce of step .* did not complete within 3 s" "$W/log" ||
  fail "no timeout error: $(cat "$W/log")"
echo "PASS"
