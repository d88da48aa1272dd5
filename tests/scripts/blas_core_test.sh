#!/usr/bin/env bash
# The CLI's OpenBLAS kernel choice (src/cli/main.cpp restart_with_vector_blas): where OpenBLAS
# fell back to kernels below what the CPU runs (Debian's 0.3.21 on a CPU model newer than it),
# lorafit starts itself again with OPENBLAS_CORETYPE set; elsewhere, and when the user set
# OPENBLAS_CORETYPE or LORAFIT_BLAS_KEEP, OpenBLAS's choice stays.
#   tests/scripts/blas_core_test.sh LORAFIT
set -uo pipefail
LORAFIT=$1
fails=0; passes=0
check() { if [ "$2" = 0 ]; then passes=$((passes + 1)); echo "ok   $1"; else fails=$((fails + 1)); echo "FAIL $1"; fi; }
core_of() { sed -n 's/^blas: OpenBLAS, \([A-Za-z0-9]*\) kernels.*/\1/p'; }

kept=$(env -u OPENBLAS_CORETYPE LORAFIT_BLAS_KEEP=1 "$LORAFIT" --version)
chosen=$(echo "$kept" | core_of)
[ -n "$chosen" ]; check "--version names OpenBLAS's kernels ($kept)" $?
echo "$kept" | grep -q "set by lorafit"; [ $? = 1 ]; check "LORAFIT_BLAS_KEEP=1 keeps OpenBLAS's choice ($chosen)" $?

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { case " $flags " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
want=""
case $(echo "$chosen" | tr 'A-Z' 'a-z') in
  haswell | zen | skylakex | cooperlake | sapphirerapids | excavator) ;;
  *) if has avx512f && has avx512bw && has avx512vl && has avx512dq; then want=SkylakeX
     elif has avx2 && has fma; then want=Haswell; fi ;;
esac
out=$(env -u OPENBLAS_CORETYPE -u LORAFIT_BLAS_KEEP "$LORAFIT" --version)
if [ -n "$want" ]; then
  echo "$out" | grep -q "^blas: OpenBLAS, $want kernels (OpenBLAS chose $chosen for this CPU; set by lorafit)$"
  check "OpenBLAS fell back to $chosen on a CPU that runs $want: lorafit restarts with $want ($out)" $?
else
  [ "$(echo "$out" | core_of)" = "$chosen" ] && ! echo "$out" | grep -q "set by lorafit"
  check "OpenBLAS's $chosen is kept where it suits the CPU ($out)" $?
fi

# The user's own setting is never overridden, even a slow one.
out=$(OPENBLAS_CORETYPE=Prescott "$LORAFIT" --version)
[ "$(echo "$out" | core_of)" = Prescott ] && ! echo "$out" | grep -q "set by lorafit"
check "OPENBLAS_CORETYPE=Prescott is kept ($out)" $?
# A training command after a restart still gets its arguments (the exec passes argv on).
out=$(env -u OPENBLAS_CORETYPE "$LORAFIT" train --definitely-not-an-option 2>&1)
echo "$out" | grep -q "definitely-not-an-option"
check "the arguments reach the command after any restart ($out)" $?

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
