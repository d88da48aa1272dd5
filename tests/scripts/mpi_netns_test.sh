#!/usr/bin/env bash
# Two "hosts": two network namespaces joined by a veth pair, one rank in each, over TCP only
# (btl tcp, oob and btl restricted to the veth subnet; mpirun starts the remote daemon through an
# rsh agent that runs it with `ip netns exec`). The adapter equals the one-process adapter
# (max |diff| <= 1e-6), and the gradient traffic crossed the veth link. Needs root and
# CAP_SYS_ADMIN: where namespaces cannot be made this test fails, it does not skip.
#   mpi_netns_test.sh SOURCE_DIR LORAFIT MPIRUN
set -euo pipefail
SRC=$1 BIN=$2 MPIRUN=$3
source "$SRC/tests/scripts/mpi_common.sh"
W=$(mktemp -d /tmp/lorafit_mpi_netns.XXXXXX)
ID=$$
NA=lfa$ID NB=lfb$ID VA=lfva$ID VB=lfvb$ID
# A /24 of 10.x.y.0 from the pid, so that concurrent runs do not collide.
NET=10.$(( (ID >> 8) % 200 + 20 )).$(( ID % 256 ))
cleanup() {
  ip netns del "$NA" 2>/dev/null || true
  ip netns del "$NB" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
mpi_fixture "$SRC" "$W"

ip netns add "$NA" || fail "cannot create network namespace $NA (needs root / CAP_SYS_ADMIN)"
ip netns add "$NB" || fail "cannot create network namespace $NB"
ip link add "$VA" type veth peer name "$VB" || fail "cannot create a veth pair"
ip link set "$VA" netns "$NA"
ip link set "$VB" netns "$NB"
ip -n "$NA" addr add "$NET.1/24" dev "$VA"
ip -n "$NB" addr add "$NET.2/24" dev "$VB"
for n in "$NA" "$NB"; do ip -n "$n" link set lo up; done
ip -n "$NA" link set "$VA" up
ip -n "$NB" link set "$VB" up

# The rsh agent: `agent HOST COMMAND...` runs COMMAND in the namespace that owns HOST's address.
cat > "$W/agent.sh" <<AG
#!/bin/sh
host=\$1; shift
case "\$host" in
  $NET.1) ns=$NA ;;
  $NET.2) ns=$NB ;;
  *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" sh -c "\$*"
AG
chmod +x "$W/agent.sh"
printf '%s slots=1\n%s slots=1\n' "$NET.1" "$NET.2" > "$W/hosts"

ARGS=(train --model "$W/tb" --train "$W/train.tsv" --batch-size 8 --lora-dropout 0 --eval-every 3
      --max-steps 6 --quiet)
"$BIN" "${ARGS[@]}" --threads 1 --output "$W/one" > "$W/one.log" 2>&1 || fail "one process: $(cat "$W/one.log")"

bytes() { ip -n "$1" -s -j link show "$2" | python3 -c "import json,sys; s=json.load(sys.stdin)[0]['stats64']; print(s['rx']['bytes'] + s['tx']['bytes'])"; }
B0=$(bytes "$NA" "$VA")
ip netns exec "$NA" "$MPIRUN" -np 2 --hostfile "$W/hosts" --allow-run-as-root \
  --mca plm_rsh_agent "$W/agent.sh" --mca btl tcp,self \
  --mca btl_tcp_if_include "$NET.0/24" --mca oob_tcp_if_include "$NET.0/24" \
  "$BIN" "${ARGS[@]}" --threads 1 --output "$W/two" > "$W/two.log" 2>&1 || fail "two hosts: $(cat "$W/two.log")"
B1=$(bytes "$NA" "$VA")
D=$(max_diff "$W/one/final/trainable.safetensors" "$W/two/final/trainable.safetensors")
echo "two namespaces over TCP: max |diff| $D; veth traffic $((B1 - B0)) bytes"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-6 else 1)" "$D" || fail "max |diff| $D > 1e-6"
# 6 all-reduces of the trainable gradients (4 bytes each, both directions) crossed the link.
NG=$(python3 -c "
import json,struct,sys
b=open(sys.argv[1],'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n])
print(sum((v['data_offsets'][1]-v['data_offsets'][0]) for k,v in h.items() if k!='__metadata__'))" "$W/one/final/trainable.safetensors")
[ $((B1 - B0)) -ge $((6 * NG)) ] || fail "only $((B1 - B0)) bytes crossed the veth link; expected >= $((6 * NG))"
echo "PASS"
