#!/usr/bin/env bash
# tools/fetch_data.sh from a file:// mirror (md5 checked, a damaged file refused by name, nothing
# half-written), from a GLUE-style SST-2.zip (converted, counts checked), and idempotent reruns.
#   tests/scripts/fetch_data_test.sh REPO_ROOT      (needs REPO_ROOT/data fetched)
set -uo pipefail
ROOT=$1
FETCH="$ROOT/tools/fetch_data.sh"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
check() {  # name, condition result
  if [ "$2" = 0 ]; then passes=$((passes + 1)); echo "ok   $1"; else fails=$((fails + 1)); echo "FAIL $1"; fi
}
mkdir -p "$T/mirror"
cp -r "$ROOT/data/sst2" "$ROOT/data/tinyshakespeare" "$T/mirror/"

# 1. A good mirror: every file arrives with its md5, readable by all.
LORAFIT_DATA_URL="file://$T/mirror" bash "$FETCH" "$T/out" 2> "$T/log1"; rc=$?
check "mirror: exit 0" $rc
for f in sst2/train.tsv sst2/dev.tsv tinyshakespeare/input.txt; do
  cmp -s "$T/mirror/$f" "$T/out/$f"; check "mirror: $f identical" $?
done
[ "$(stat -c %a "$T/out/sst2/dev.tsv")" = 644 ]; check "mirror: files are 0644" $?
# 2. Rerun: nothing to do, even with the source gone.
LORAFIT_DATA_URL="file://$T/nowhere" bash "$FETCH" "$T/out" 2> "$T/log2"; rc=$?
check "rerun: exit 0 without a source" $rc
grep -q "all data present" "$T/log2"; check "rerun: says all data present" $?
# 3. A damaged file: refused by name and md5, not installed, no temporary left behind.
echo x >> "$T/mirror/sst2/dev.tsv"
LORAFIT_DATA_URL="file://$T/mirror" bash "$FETCH" "$T/bad" 2> "$T/log3"; rc=$?
[ $rc -ne 0 ]; check "damaged: exit non-zero" $?
grep -q "sst2/dev.tsv: md5 .*expected 2b070f88622773268a9bb41c6e941e60" "$T/log3"; check "damaged: message names the file and md5" $?
[ ! -e "$T/bad/sst2/dev.tsv" ]; check "damaged: not installed" $?
[ -z "$(find "$T/bad" -name '.fetch-*' 2>/dev/null)" ]; check "damaged: no temporary file left" $?
# 4. A missing mirror file: the URL is named.
rm "$T/mirror/tinyshakespeare/input.txt"
LORAFIT_DATA_URL="file://$T/mirror" bash "$FETCH" "$T/miss" 2> "$T/log4"; rc=$?
[ $rc -ne 0 ] && grep -q "mirror/sst2/dev.tsv: md5\|mirror/tinyshakespeare/input.txt: download failed" "$T/log4"
check "missing: exit non-zero naming the URL" $?
# 5. The GLUE layout (sentence<TAB>label), converted; a short file is refused with the counts.
python3 - "$T" <<'PY'
import sys, zipfile
t = sys.argv[1]
def rows(n, pos):
    return "sentence\tlabel\n" + "".join(f"sentence {i} \t{1 if i < pos else 0}\n" for i in range(n))
with zipfile.ZipFile(f"{t}/SST-2.zip", "w") as z:
    z.writestr("SST-2/train.tsv", rows(67349, 30000))
    z.writestr("SST-2/dev.tsv", rows(872, 444))
with zipfile.ZipFile(f"{t}/short.zip", "w") as z:
    z.writestr("SST-2/train.tsv", rows(100, 50))
    z.writestr("SST-2/dev.tsv", rows(872, 444))
PY
mkdir -p "$T/glue/tinyshakespeare"; cp "$ROOT/data/tinyshakespeare/input.txt" "$T/glue/tinyshakespeare/"
# No mirror and no shared folder: SST-2 comes from the zip. Tiny Shakespeare is already present
# there, so no network is used.
export LORAFIT_SHARED_DATA="$T/no-shared"
LORAFIT_DATA_URL= LORAFIT_GLUE_SST2_URL="file://$T/SST-2.zip" bash "$FETCH" "$T/glue" 2> "$T/log5"; rc=$?
check "glue: exit 0" $rc
[ "$(head -1 "$T/glue/sst2/dev.tsv")" = "label	content" ]; check "glue: dev header" $?
[ "$(sed -n 2p "$T/glue/sst2/train.tsv")" = "1	sentence 0" ]; check "glue: label first, text stripped" $?
[ "$(wc -l < "$T/glue/sst2/train.tsv")" = 67350 ]; check "glue: 67,349 rows + header" $?
mkdir -p "$T/short/tinyshakespeare"; cp "$ROOT/data/tinyshakespeare/input.txt" "$T/short/tinyshakespeare/"
LORAFIT_DATA_URL= LORAFIT_GLUE_SST2_URL="file://$T/short.zip" bash "$FETCH" "$T/short" 2> "$T/log6"; rc=$?
[ $rc -ne 0 ] && grep -q "SST-2/train.tsv has 100 rows (50 positive), expected 67349" "$T/log6"
check "glue: a short file is refused with its counts" $?
[ ! -e "$T/short/sst2/train.tsv" ]; check "glue: nothing installed from it" $?
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
